"""Training side (TensorFlow/Keras, the `train` extra): models, training runs, fusion, evaluation and metrics."""
