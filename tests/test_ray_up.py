"""`ray up` for real: cluster.yaml's own setup and start commands, over SSH, on Ray's `local` provider.

The cluster is two throwaway "machines" on this one: a head and a GPU-less
worker (cluster.yaml's head advertises no CPU, so training needs a worker), each in its own Linux namespaces (PID, mount, network, hostname), joined
by a veth pair (head 10.213.0.1, worker 10.213.0.2), each with its own sshd,
/tmp and /etc/hosts. Both see the same fresh home for root (like an NFS home:
the worker reuses the head's ~/pdiff-venv) and this machine's /var/tmp, where
the results go (`--shared-storage`). Why namespaces and not plain processes:
cluster.yaml's start commands and `ray down` run `ray stop`, which kills every
Ray process of the user on the machine (other tests' Ray included); the start
commands bind fixed ports (6379, 8076, 8265); setup edits ~/.bashrc; and a fresh
home has no ~/.ray/auth_token, as on a new cloud machine. Nothing of this
machine's own /root, /tmp or network is touched.

The config keeps cluster.yaml's file_mounts, rsync_exclude, setup and start
commands verbatim (so the commands users run are the ones tested) and replaces
the AWS provider, auth and node types with the local provider. The `ray` CLI
runs on the head (as on an on-prem cluster started from its head). pip on the
namespaced machines reaches PyPI through tests/netns_proxy.py (PyPI only).

Set-up installs openssh-server and rsync with apt-get when missing. Skipped,
with the reason, when not root, when apt-get cannot install them, or when
namespaces cannot be made. 4-5.5 minutes on 2 cores (ray up ~2-2.5, the sweep
~1-1.5), ~6.5 GB of disk while it runs (the cluster's venv), all removed at the end.
"""

from __future__ import annotations

import configparser
import copy
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from conftest import unavailable
from tiny_sweep import CELLS, TINY, K, N

from orchestrator.store.tables import Store

pytestmark = [pytest.mark.slow, pytest.mark.launcher]

ROOT = Path(__file__).resolve().parents[1]
RAY = Path(sys.executable).with_name("ray")
HEAD_IP, WORKER_IP = "10.213.0.1", "10.213.0.2"
PROXY_PORT = 3128
DASHBOARD_PORT = 8266  # `ray dashboard`'s local end; the head's own dashboard holds 8265
REMOTE_HOME = "/root"  # ssh_user root
TRIALS = 1  # trials per cell: the tiny sweep with one Optuna trial per cell
# Ray's processes, as seen inside a machine's PID namespace (which holds only this test's processes).
RAY_PROCESS = re.compile(r"raylet|gcs_server|ray::|ray-dashboard|pdiff-venv/|/ray/|ray\.util\.client")
REAPER = """
import os, signal, time
signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
while True:  # PID 1 of the namespace: reap Ray's daemonised processes
    try:
        os.wait()
    except ChildProcessError:
        time.sleep(0.2)
"""


# --------------------------------------------------------------------------- set-up


def _run(argv, timeout=60, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)


def _require_tools() -> None:
    if not sys.platform.startswith("linux"):
        unavailable("needs Linux namespaces")
    if os.geteuid() != 0:
        unavailable("needs root: installs openssh-server and rsync, starts sshd, makes namespaces")
    for tool in ("unshare", "nsenter", "ip", "mount"):
        if not shutil.which(tool):
            unavailable(f"needs {tool} (util-linux / iproute2)")
    if not (Path("/usr/sbin/sshd").exists() and shutil.which("rsync") and shutil.which("ssh-keygen")):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "openssh-server", "rsync"]
        proc = _run(install, timeout=600, env=env)
        if proc.returncode != 0:  # maybe the package lists are missing or stale
            _run(["apt-get", "update", "-qq"], timeout=600, env=env)
            proc = _run(install, timeout=600, env=env)
        if proc.returncode != 0:
            unavailable(f"apt-get could not install openssh-server and rsync: {proc.stderr.strip()[-500:]}")
    probe = _run(["unshare", "--pid", "--fork", "--mount-proc", "--mount", "--net", "--uts", "true"])
    if probe.returncode != 0:
        unavailable(f"cannot create PID/mount/network namespaces here: {probe.stderr.strip()}")
    if shutil.disk_usage("/var/tmp").free < 12e9:
        unavailable("needs ~12 GB free under /var/tmp for the cluster's venv")


class Machine:
    """A namespaced 'machine': its own PIDs, mounts (/tmp, /root, /etc/hosts), network and hostname."""

    def __init__(self, name: str, ip: str):
        self.name, self.ip = name, ip
        self._outer = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--mount-proc", "--mount", "--net", "--uts", "--propagation", "private",
             sys.executable, "-c", REAPER], start_new_session=True)
        try:
            self.pid = self._inner_pid()
        except BaseException:
            os.killpg(self._outer.pid, signal.SIGKILL)
            self._outer.wait()
            raise

    def prepare(self, work: Path, home: Path, hosts: Path) -> None:
        tmp = work / f"tmp-{self.name}"
        tmp.mkdir()
        tmp.chmod(0o1777)
        # The login shell's tools from the real home (pyenv, cargo, ... whatever the startup files name),
        # bound into the fresh home; then the fresh home over /root, a private /tmp and /etc/hosts.
        binds = [(f"/root/{d}", f"{home}/{d}") for d in _dirs_named_by_startup_files() if (home / d).is_dir()]
        # A checkout under /tmp or /root (CI may clone anywhere) would vanish under the private
        # mounts: park it on a mount point in `work` first and bind it back at its own path after.
        hidden = any(str(ROOT).startswith(p) for p in ("/tmp/", "/root/"))
        park = work / f"repo-{self.name}"
        self.check(["sh", "-c", "; ".join([
            "set -e", f"hostname {self.name}", "ip link set lo up",
            *(f"mount --bind {src} {dst}" for src, dst in binds),
            *([f"mkdir -p {park}", f"mount --bind {ROOT} {park}"] if hidden else []),
            f"mount --rbind {home} /root", f"mount --bind {tmp} /tmp", f"mount --bind {hosts} /etc/hosts",
            *([f"mkdir -p {ROOT}", f"mount --bind {park} {ROOT}"] if hidden else []),
        ])])

    def _inner_pid(self) -> int:
        children = Path(f"/proc/{self._outer.pid}/task/{self._outer.pid}/children")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                pids = children.read_text().split()
            except FileNotFoundError:
                pids = []
            if pids:
                return int(pids[0])
            assert self._outer.poll() is None, "unshare exited"
            time.sleep(0.05)
        raise AssertionError("the namespace's first process did not start")

    def nsenter(self, argv: list[str], cwd: Path | None = None) -> list[str]:
        wd = [f"--wd={cwd}"] if cwd else []
        return ["nsenter", "-t", str(self.pid), "-m", "-n", "-p", "-u", *wd, "--", *argv]

    def check(self, argv: list[str], timeout: float = 60) -> str:
        proc = _run(self.nsenter(argv), timeout=timeout)
        assert proc.returncode == 0, f"{self.name}: {argv}: {proc.stdout[-2000:]}{proc.stderr[-2000:]}"
        return proc.stdout

    def ray_processes(self) -> list[str]:
        out = self.check(["ps", "-ww", "-eo", "pid=,args="])
        return [line.strip() for line in out.splitlines() if RAY_PROCESS.search(line)]

    def stop(self) -> None:
        if self._outer.poll() is None:
            try:
                os.kill(self.pid, signal.SIGTERM)  # PID 1 exits: the kernel kills all the namespace holds
            except ProcessLookupError:
                pass
            try:
                self._outer.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self._outer.pid, signal.SIGKILL)
                self._outer.wait(timeout=20)


def _dirs_named_by_startup_files() -> list[str]:
    """The dot-folders of root's home that its shell startup files use (e.g. .pyenv, .cargo)."""
    named = set()
    for f in (".bashrc", ".profile", ".bash_profile", ".bash_login"):
        path = Path("/root") / f
        if path.is_file():
            named |= set(re.findall(r"(?:\$HOME|\$\{HOME\}|~|/root)/(\.[A-Za-z0-9_-][A-Za-z0-9_.-]*)",
                                    path.read_text(errors="replace")))
    return sorted(d for d in named if (Path("/root") / d).is_dir())


def _fresh_home(home: Path) -> None:
    """root's home on a new machine: this machine's shell startup files and pip config, nothing else."""
    home.mkdir(mode=0o700)
    for f in (".bashrc", ".profile", ".bash_profile", ".bash_login"):
        if (Path("/root") / f).is_file():
            shutil.copy2(Path("/root") / f, home / f)
    for d in _dirs_named_by_startup_files():
        (home / d).mkdir()  # mount points
    pip = configparser.ConfigParser()
    pip.read(["/root/.config/pip/pip.conf", "/root/.pip/pip.conf"])  # this machine's user pip config ...
    if not pip.has_section("global"):
        pip.add_section("global")
    pip.set("global", "proxy", f"http://127.0.0.1:{PROXY_PORT}")  # ... plus the way out to PyPI
    (home / ".config" / "pip").mkdir(parents=True)
    with open(home / ".config" / "pip" / "pip.conf", "w") as f:
        pip.write(f)


def _sshd(machine: Machine, work: Path) -> None:
    conf = work / f"sshd-{machine.name}.conf"
    conf.write_text("\n".join([
        f"ListenAddress {machine.ip}", "ListenAddress 127.0.0.1", "Port 22",
        f"HostKey {work}/ssh_host_key", f"AuthorizedKeysFile {work}/authorized_keys",
        "PermitRootLogin prohibit-password", "PubkeyAuthentication yes", "PasswordAuthentication no",
        "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no", f"PidFile {work}/sshd-{machine.name}.pid",
        "",
    ]))
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation folder
    machine.check(["/usr/sbin/sshd", "-f", str(conf), "-E", str(work / f"sshd-{machine.name}.log")])


def local_cluster_config(name: str, key: Path) -> dict:
    """cluster.yaml with Ray's local provider instead of AWS; its file mounts and commands verbatim."""
    src = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    config = {
        "cluster_name": name,
        "max_workers": 1,
        "provider": {"type": "local", "head_ip": HEAD_IP, "worker_ips": [WORKER_IP]},
        "auth": {"ssh_user": "root", "ssh_private_key": str(key)},
        # The one rewrite: cluster.yaml's remote paths live in the AWS image's user's home
        # (/home/ubuntu); here the SSH user is root, whose home is /root. The commands say ~ already.
        "file_mounts": {remote.replace("/home/ubuntu", REMOTE_HOME): local
                        for remote, local in src["file_mounts"].items()},
    }
    for field in ("upscaling_speed", "idle_timeout_minutes", "rsync_exclude", "rsync_filter",
                  "initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
                  "head_start_ray_commands", "worker_start_ray_commands"):
        if field in src:
            config[field] = copy.deepcopy(src[field])
    return config


@pytest.fixture
def cluster_machines():
    _require_tools()
    work = Path(tempfile.mkdtemp(prefix="pdiff-ray-up-", dir="/var/tmp"))
    machines: list[Machine] = []
    proxy = None
    try:
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "pdiff-ray-up", "-f", str(work / "key")], check=True)
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(work / "ssh_host_key")], check=True)
        shutil.copy(work / "key.pub", work / "authorized_keys")
        home = work / "home"
        _fresh_home(home)
        hosts = work / "hosts"
        hosts.write_text(f"127.0.0.1 localhost\n{HEAD_IP} pdiff-head\n{WORKER_IP} pdiff-worker\n")
        for name, ip in (("pdiff-head", HEAD_IP), ("pdiff-worker", WORKER_IP)):
            machines.append(Machine(name, ip))
            machines[-1].prepare(work, home, hosts)
        head, worker = machines
        # The wire between them. The default routes only let Ray find its node IP (it asks the kernel
        # which source address would reach a public address); there is no way out of these namespaces.
        # (`ip` in the head's network namespace only: the worker's PID is this side's.)
        _run(["nsenter", "-t", str(head.pid), "-n", "--", "ip", "link", "add", "pd0", "type", "veth",
              "peer", "name", "pd0", "netns", str(worker.pid)], check=True)
        for m in (head, worker):
            m.check(["sh", "-c", f"ip addr add {m.ip}/24 dev pd0 && ip link set pd0 up && "
                                 f"ip route add default dev pd0"])
            _sshd(m, work)
        proxy = subprocess.Popen([sys.executable, str(ROOT / "tests" / "netns_proxy.py"), str(PROXY_PORT),
                                  str(head.pid), str(worker.pid)], stdout=subprocess.PIPE, text=True)
        assert proxy.stdout.readline().strip() == "ready"
        yield work, head, worker
    finally:
        if proxy is not None:
            proxy.terminate()
            proxy.wait(timeout=10)
        for m in machines:
            m.stop()
        _remove(work)


def _remove(work: Path) -> None:
    # The binds (the real home's .pyenv and the like) lived only in the namespaces' mount tables, which
    # are gone with their processes: from here the mount points are empty folders. Check before deleting.
    assert work.parent == Path("/var/tmp") and work.name.startswith("pdiff-ray-up-")
    users = []  # no process on this machine may still run from there (Ray, sshd, ...)
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(work) in cmdline.read_bytes().decode(errors="replace"):
                users.append(cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            pass
    mounts = Path("/proc/self/mountinfo").read_text()
    assert f" {work}" not in mounts, f"something is still mounted under {work}: not deleting it"
    # A process left in a namespace keeps its binds (the checkout, the real home's tools) alive:
    # never delete through them.
    assert not users, f"processes left behind, {work} kept: {users}"
    for park in work.glob("repo-*"):
        park.rmdir()  # an empty mount point, or an error rather than deleting a bound checkout
    shutil.rmtree(work, ignore_errors=True)


# --------------------------------------------------------------------------- the test


def test_ray_up_runs_the_sweep_and_ray_down_leaves_nothing(cluster_machines, tmp_path):
    work, head, worker = cluster_machines
    logs = tmp_path / "logs"
    logs.mkdir()
    name = f"pdiff-ray-up-{os.getpid()}"
    config = work / "cluster-local.yaml"
    config.write_text(yaml.safe_dump(local_cluster_config(name, work / "key"), sort_keys=False))
    spec = copy.deepcopy(TINY)
    spec["pdiff"]["num_samples"] = TRIALS
    (work / "tiny.yaml").write_text(yaml.safe_dump(spec))
    storage = work / "results"
    storage.mkdir()
    env = dict(os.environ, HOME=REMOTE_HOME, RAY_USAGE_STATS_ENABLED="0",
               # Ray 2.60's autoscaler v2 (the default for `ray up`) never starts the local provider's
               # workers: the head is of the only node type, which then counts as the one worker wanted.
               RAY_UP_enable_autoscaler_v2="0")
    env.pop("RAY_ADDRESS", None)
    timings = {}

    def ray(step: str, *args: str, timeout: float = 300, check: bool = True) -> str:
        """A `ray` CLI call from the head machine (the laptop of an on-prem cluster), logged."""
        start = time.monotonic()
        proc = subprocess.run(head.nsenter([str(RAY), *args], cwd=ROOT), env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=timeout)
        timings[step] = timings.get(step, 0) + time.monotonic() - start
        with open(logs / f"{step}.log", "a") as f:
            f.write(proc.stdout)
        if check:
            assert proc.returncode == 0, f"ray {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-5000:]}"
        return proc.stdout

    # 1. ray up: rsync the tree, cluster.yaml's setup commands (venv, pip install -e, ~/.bashrc), Ray on the head.
    ray("up", "up", "-y", "--no-config-cache", str(config), timeout=600)
    assert head.ray_processes(), "ray up reported success but no Ray runs on the head"

    # 2. The autoscaler starts the worker (setup and worker_start_ray_commands over SSH from the head).
    #    `ray` must be on the login shell's PATH (through ~/.bashrc), or `ray down` would stop nothing.
    deadline = time.monotonic() + 300
    while True:
        out = ray("worker", "exec", "--no-config-cache", str(config), "command -v ray; ray status", check=False)
        cpus = [float(total) for _, total in re.findall(r"([\d.]+)/([\d.]+) CPU", out)]
        if cpus and cpus[0] > 0:  # the head has no CPU: any is the worker's
            break
        assert time.monotonic() < deadline, f"the worker never joined:\n{out[-4000:]}"
        time.sleep(5)
    assert f"{REMOTE_HOME}/pdiff-venv/bin/ray" in out
    assert "pdiff_head" in out

    # 3. The tiny sweep, submitted as the README says: `ray dashboard` forwards the dashboard over SSH,
    #    `ray job submit --working-dir .` uploads this checkout (as .gitignore filters it), `ray job logs`.
    #    Local port 8266: the CLI runs on the head, where the dashboard itself holds 8265.
    ray("sweep", "rsync-up", str(config), str(work / "tiny.yaml"), f"{REMOTE_HOME}/tiny.yaml")
    forward = subprocess.Popen(head.nsenter([str(RAY), "dashboard", "-p", str(DASHBOARD_PORT), "--no-config-cache",
                                             str(config)], cwd=ROOT), env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    dashboard = f"http://localhost:{DASHBOARD_PORT}"
    try:
        deadline = time.monotonic() + 60
        while "ALIVE" not in ray("dashboard", "list", "nodes", "--address", dashboard, check=False, timeout=60):
            assert time.monotonic() < deadline, "the forwarded dashboard never answered"
            time.sleep(2)
        job = f"tiny-{os.getpid()}"
        out = ray("sweep", "job", "submit", "--address", dashboard, "--submission-id", job, "--working-dir", ".",
                  "--", "python", "-m", "orchestrator.sweep", f"{REMOTE_HOME}/tiny.yaml", "--storage", str(storage),
                  "--shared-storage", timeout=600)
        logs_out = ray("sweep", "job", "logs", "--address", dashboard, job, timeout=60)
        status = ray("sweep", "job", "status", "--address", dashboard, job, timeout=60)
        nodes = ray("sweep", "list", "nodes", "--address", dashboard, "--format", "json", timeout=60)
    finally:
        os.killpg(forward.pid, signal.SIGTERM)
        forward.wait(timeout=30)
    assert f"Job '{job}' succeeded" in status, status
    for text in (out, logs_out):
        assert "sources 2/2" in text and f"trials {CELLS * TRIALS}/{CELLS * TRIALS}" in text
    # What went up: the checkout without .venv/ and results/ (ignored by .gitignore), unpacked on the head.
    uploaded = head.check(["find", "/tmp/ray/session_latest/runtime_resources/working_dir_files",
                           "-mindepth", "2", "-maxdepth", "2"]).split()
    names = {Path(p).name for p in uploaded}
    assert {"orchestrator", "pdiff", "pyproject.toml"} <= names, uploaded
    assert not names & {".venv", "results"}, uploaded
    worker_node = [n["node_id"] for n in json.loads(nodes[nodes.index("["):]) if n["node_ip"] == WORKER_IP]

    # 4. ray down: `ray stop` on the head through the login shell's PATH.
    ray("down", "down", "-y", str(config), timeout=300)
    assert head.ray_processes() == [], "ray down left Ray running on the head"
    # Ray's local provider does not stop Ray on workers at `ray down` (it only marks them terminated;
    # ray-project/ray#17022); cloud providers terminate the machines. Stop it the way Ray would have.
    left_on_worker = worker.ray_processes()
    (logs / "left-on-worker.txt").write_text("\n".join(left_on_worker))
    stop = subprocess.run(head.nsenter([
        "ssh", "-i", str(work / "key"), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
        "-o", "LogLevel=ERROR", f"root@{WORKER_IP}", "bash --login -c -i 'source ~/.bashrc; ray stop'"]),
        capture_output=True, text=True, timeout=120)
    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert worker.ray_processes() == [], "ray stop left Ray running on the worker"

    # 5. The tables: complete, every trial finished.
    store = Store(str(storage), "tiny")
    sources, trials = store.read_pandas("sources"), store.read_pandas("trials")
    assert len(sources) == CELLS and sources.cell_id.is_unique
    assert len(store.read_pandas("checkpoints")) == CELLS * K
    assert len(trials) == CELLS * TRIALS and (trials.status == "completed").all()
    assert len(store.read_pandas("generated")) == CELLS * TRIALS * N
    baselines = store.read_pandas("baselines")
    assert len(baselines) == CELLS * 3 * N and set(baselines.method) == {"noise", "average", "gaussian"}
    # Training and trials ran on the worker (the head advertises no CPU).
    assert set(sources.node_id) | set(trials.node_id) == set(worker_node), (worker_node, set(sources.node_id))

    print("ray up test timings (s):", {k: round(v) for k, v in timings.items()},
          "| left on the worker by ray down:", len(left_on_worker), "Ray processes")
