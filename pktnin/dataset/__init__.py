"""Datasets of labeled packet rows, built from captures without TensorFlow.

format    the dataset directory: split codes, write_dataset, load_dataset, Dataset
sampling  per-group reservoir sample, random and by-file splits, flow ids
options   BuildOptions: what to build from where, checked when made
build     build_dataset(options): the one build loop
source    Source: what a source hands the build loop
iscx, class_dirs, flow_csv   one module per source kind; detect tells them apart
"""
