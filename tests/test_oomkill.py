"""The kernel-OOM proof (engines/oomkill.py) against cgroup trees made on disk: /proc/PID/cgroup
and the memory cgroup's counter file, as cgroup v2, a hybrid system and cgroup v1 lay them out.
(tests/test_faults.py has the real thing, where a memory cgroup can be made.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from carbontop.engines.oomkill import oom_kill_counter, oom_killed_since

PID = 4242
# memory.events as cgroup v2 writes it (Documentation/admin-guide/cgroup-v2.rst)
EVENTS_V2 = "low 0\nhigh 0\nmax {max}\noom {oom}\noom_kill {kills}\noom_group_kill 0\n"
# memory.oom_control as cgroup v1 writes it: oom_kill_disable comes first and must not be taken
OOM_CONTROL_V1 = "oom_kill_disable 0\nunder_oom 0\noom_kill {kills}\n"


class Tree:
    """A /proc and a /sys/fs/cgroup under tmp_path."""

    def __init__(self, tmp_path: Path, proc_cgroup: str) -> None:
        self.proc = tmp_path / "proc"
        self.cgroup = tmp_path / "sys" / "fs" / "cgroup"
        (self.proc / str(PID)).mkdir(parents=True)
        (self.proc / str(PID) / "cgroup").write_text(proc_cgroup)
        self.cgroup.mkdir(parents=True)

    def write(self, rel: str, text: str) -> Path:
        path = self.cgroup / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def counter(self):
        return oom_kill_counter(PID, cgroup_root=self.cgroup, proc_root=self.proc)


V2_SCOPE = "user.slice/user-0.slice/session-3.scope"


def test_cgroup_v2_counts_an_oom_kill_from_memory_events(tmp_path) -> None:
    tree = Tree(tmp_path, f"0::/{V2_SCOPE}\n")
    events = tree.write(f"{V2_SCOPE}/memory.events", EVENTS_V2.format(max=4, oom=1, kills=1))
    before = tree.counter()
    assert before is not None and before.path == events and before.count == 1
    assert oom_killed_since(before) is False  # nothing since
    events.write_text(EVENTS_V2.format(max=9, oom=2, kills=2))
    assert oom_killed_since(before) is True
    # the other counters (max, oom) climbing alone is no kill
    before = tree.counter()
    events.write_text(EVENTS_V2.format(max=20, oom=5, kills=2))
    assert oom_killed_since(before) is False


def test_a_hybrid_system_reads_the_unified_mount(tmp_path) -> None:
    # systemd's hybrid layout: v1 controllers elsewhere, v2 mounted at /sys/fs/cgroup/unified
    tree = Tree(tmp_path, f"5:cpu,cpuacct:/{V2_SCOPE}\n0::/{V2_SCOPE}\n")
    events = tree.write(f"unified/{V2_SCOPE}/memory.events", EVENTS_V2.format(max=0, oom=0, kills=0))
    counter = tree.counter()
    assert counter is not None and counter.path == events and counter.count == 0


def test_cgroup_v1_reads_memory_oom_control(tmp_path) -> None:
    tree = Tree(tmp_path, "12:pids:/docker/abc\n9:memory:/docker/abc\n0::/\n")
    control = tree.write("memory/docker/abc/memory.oom_control", OOM_CONTROL_V1.format(kills=3))
    before = tree.counter()
    assert before is not None and before.path == control and before.count == 3
    control.write_text(OOM_CONTROL_V1.format(kills=4))
    assert oom_killed_since(before) is True


def test_cgroup_v1_inside_a_container_falls_back_to_the_hierarchys_root(tmp_path) -> None:
    # /proc says the host's path, but the container sees its own cgroup at the mount's root
    tree = Tree(tmp_path, "9:memory:/kubepods/pod1/ctr\n")
    control = tree.write("memory/memory.oom_control", OOM_CONTROL_V1.format(kills=0))
    counter = tree.counter()
    assert counter is not None and counter.path == control and counter.count == 0


@pytest.mark.parametrize(
    ("proc_cgroup", "files"),
    [
        (f"0::/{V2_SCOPE}\n", {}),  # no memory.events (the memory controller not enabled there)
        ("0::/\n", {}),  # the root cgroup has no memory.events
        ("9:memory:/docker/abc\n", {}),  # v1 with neither counter file
        ("4:cpu:/x\n", {"memory.events": EVENTS_V2.format(max=0, oom=0, kills=0)}),  # no memory line
        (f"0::/{V2_SCOPE}\n", {f"{V2_SCOPE}/memory.events": "oom_kill many\n"}),  # unreadable value
        (f"0::/{V2_SCOPE}\n", {f"{V2_SCOPE}/memory.events": "low 0\nhigh 0\n"}),  # no oom_kill line
        ("", {}),  # an empty /proc/PID/cgroup
        ("garbage\n", {}),  # a line that is not hierarchy:controllers:path
    ],
)
def test_no_readable_counter_is_unknown_never_a_proof(tmp_path, proc_cgroup, files) -> None:
    tree = Tree(tmp_path, proc_cgroup)
    for rel, text in files.items():
        tree.write(rel, text)
    assert tree.counter() is None
    assert oom_killed_since(None) is None  # what the host then concludes: unknown, not an OOM


def test_a_process_that_is_gone_has_no_counter(tmp_path) -> None:
    tree = Tree(tmp_path, f"0::/{V2_SCOPE}\n")
    assert oom_kill_counter(PID + 1, cgroup_root=tree.cgroup, proc_root=tree.proc) is None


def test_a_cgroup_removed_after_the_first_reading_is_unknown(tmp_path) -> None:
    tree = Tree(tmp_path, f"0::/{V2_SCOPE}\n")
    events = tree.write(f"{V2_SCOPE}/memory.events", EVENTS_V2.format(max=0, oom=0, kills=0))
    before = tree.counter()
    assert before is not None
    events.unlink()  # the scope went away with its last process
    assert oom_killed_since(before) is None
