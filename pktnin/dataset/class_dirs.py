"""Class-folder source: the class of a capture is the name of the sub-directory of the root it lies in (at any
depth below it)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pktnin.dataset.source import Source, label_by_file, source_dir
from pktnin.packets import find_captures

if TYPE_CHECKING:
    from pktnin.dataset.options import BuildOptions


def read(options: BuildOptions) -> Source:
    root = source_dir(options.source)
    skipped: list[tuple[str, str]] = []
    class_dirs = []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            class_dirs.append(entry)
        else:
            skipped.append((entry.name, "not inside a class directory"))
    files: list[Path] = []
    file_class: list[int] = []
    classes: list[str] = []
    for d in class_dirs:
        found = find_captures([d])
        if not found:
            skipped.append((d.name + "/", "empty class directory"))
            continue
        classes.append(d.name)
        files.extend(found)
        file_class.extend([len(classes) - 1] * len(found))
    if not classes:
        raise ValueError(f"{root}: no class sub-directory holds any file")
    return Source(
        kind="class-dirs",
        task="class-dirs",
        label_column=None,
        max_per_class=options.max_per_class,
        root=root,
        files=files,
        classes=classes,
        label_batch=label_by_file(file_class, file_class),  # one sampling group per class
        group_caps=[options.max_per_class] * len(classes),
        group_class=list(range(len(classes))),
        skipped=skipped,
    )
