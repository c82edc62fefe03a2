"""ISCX VPN-nonVPN source: classes from capture file names (the paper's task A, applications, and task B,
traffic types)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pktnin.dataset.source import Source, label_by_file, relative_name, source_dir
from pktnin.packets import find_captures

if TYPE_CHECKING:
    from pktnin.dataset.options import BuildOptions

# File-name rules. A name is lower-cased and its extension dropped; a leading "vpn_" marks a VPN capture and is
# removed. The first application whose prefix matches wins (order matters: "torrent" before "tor"). The traffic
# type (the paper's Table 2) is fixed per application, except for Facebook, Hangouts and Skype, whose activity
# word decides it: "chat" -> Chat, "file" -> File Transfer, "audio"/"video"/"voip" -> VoIP.
# Table 2 lists Gmail under Email, so gmailchat*.pcap counts as Email. SCP and Tor have no traffic type in
# Table 2 and only non-VPN captures, so neither task uses them; Gmail is left out of task A (Table 1 and Sec. III.A).
ISCX_APPS: tuple[tuple[str, str, str | None], ...] = (
    # (application, name prefix (regex), traffic type; None = decided by the activity word)
    ("AIM", r"aim", "Chat"),
    ("ICQ", r"icq", "Chat"),
    ("Gmail", r"gmail", "Email"),
    ("Email", r"e-?mail", "Email"),
    ("Facebook", r"facebook", None),
    ("Hangouts", r"hangouts?", None),
    ("Skype", r"skype", None),
    ("FTPS", r"ftps", "File Transfer"),
    ("SFTP", r"sftp", "File Transfer"),
    ("SCP", r"scp", None),
    ("Torrent", r"(?:bit)?torrent", "P2P"),
    ("Tor", r"tor", None),
    ("Voipbuster", r"voipbuster", "VoIP"),
    ("Netflix", r"netflix", "Streaming"),
    ("YouTube", r"youtube", "Streaming"),
    ("Vimeo", r"vimeo", "Streaming"),
    ("Spotify", r"spotify", "Streaming"),
)
_ISCX_ACTIVITY_APPS = {"Facebook", "Hangouts", "Skype"}
_ISCX_ACTIVITIES = (("chat", "Chat"), ("file", "File Transfer"), ("audio", "VoIP"), ("video", "VoIP"), ("voip", "VoIP"))

# Task A: the 14 applications of Table 1 with both VPN and non-VPN captures, up to 5,000 packets each, half VPN.
ISCX_TASK_A = (
    "AIM", "Email", "Facebook", "FTPS", "Hangouts", "ICQ", "Netflix",
    "SFTP", "Skype", "Spotify", "Torrent", "Voipbuster", "Vimeo", "YouTube",
)  # fmt: skip
ISCX_TASK_A_CAP = 5000
# Task B: the 12 traffic types of Table 1 (right), up to 12,000 packets each.
ISCX_TRAFFIC_TYPES = ("Chat", "Email", "File Transfer", "Streaming", "P2P", "VoIP")
ISCX_TASK_B = ISCX_TRAFFIC_TYPES + tuple(f"VPN-{t}" for t in ISCX_TRAFFIC_TYPES)
ISCX_TASK_B_CAP = 12000
ISCX_TASKS = {"A": "A", "app": "A", "application": "A", "B": "B", "traffic": "B"}


@dataclass(frozen=True)
class IscxLabel:
    app: str
    traffic: str | None  # Table 2 traffic type without the VPN- prefix; None when the file has none
    vpn: bool

    @property
    def traffic_class(self) -> str | None:
        if self.traffic is None:
            return None
        return f"VPN-{self.traffic}" if self.vpn else self.traffic


def iscx_label(file_name: str) -> IscxLabel | None:
    """Application, traffic type and VPN flag of an ISCX VPN-nonVPN capture from its file name (None: unknown)."""
    stem = Path(file_name).name.lower()
    stem = re.sub(r"\.(pcapng|pcap|cap)$", "", stem)
    vpn = re.match(r"vpn[_-]", stem) is not None
    if vpn:
        stem = stem[4:]
    for app, prefix, traffic in ISCX_APPS:
        matched = re.match(prefix, stem)
        if matched is None:
            continue
        if app in _ISCX_ACTIVITY_APPS:
            rest = stem[matched.end() :]
            traffic = next((t for word, t in _ISCX_ACTIVITIES if word in rest), None)
            if traffic is None:
                return None  # the activity cannot be told from the name
        return IscxLabel(app, traffic, vpn)
    return None


def read(options: BuildOptions) -> Source:
    """Task A (14 applications, VPN:non-VPN 1:1 up to half the cap each) or task B (12 traffic types)."""
    task = options.task
    root = source_dir(options.source)
    classes = list(ISCX_TASK_A if task == "A" else ISCX_TASK_B)
    cap = options.max_per_class or (ISCX_TASK_A_CAP if task == "A" else ISCX_TASK_B_CAP)

    files: list[Path] = []
    file_class: list[int] = []
    file_group: list[int] = []
    skipped: list[tuple[str, str]] = []
    for path in find_captures([root]):
        label = iscx_label(path.name)
        if label is None:
            skipped.append((relative_name(path, root), "file name matches no ISCX application/activity"))
            continue
        name = label.app if task == "A" else label.traffic_class
        if name not in classes:
            skipped.append((relative_name(path, root), f"{label.app} is not part of task {task}"))
            continue
        cls = classes.index(name)
        files.append(path)
        file_class.append(cls)
        # Task A samples VPN and non-VPN packets of an application separately, half the cap each.
        file_group.append(2 * cls + int(label.vpn) if task == "A" else cls)
    if task == "A":
        caps = [(cap + 1 - side) // 2 for _ in classes for side in (0, 1)]
        group_class = [cls for cls in range(len(classes)) for _ in (0, 1)]
    else:
        caps = [cap] * len(classes)
        group_class = list(range(len(classes)))
    return Source(
        kind="iscx",
        task=f"iscx-{task}",
        label_column=None,
        max_per_class=cap,
        root=root,
        files=files,
        classes=classes,
        label_batch=label_by_file(file_class, file_group),
        group_caps=caps,
        group_class=group_class,
        skipped=skipped,
    )
