"""The peers of issue 16's table, on loopback, storage on disk under the bench's work
dir: a FUSE passthrough (bindfs), sshfs (to 127.0.0.1 as root, through an sshd of our
own on port 21022 with keys made for the run), and GlusterFS, a dispersed 2+1 volume
and a distributed one, 3 bricks each.

Their Debian packages are installed with apt-get if missing and purged at the end
(exactly the packages the install added, dependencies included), also on failure or
Ctrl-C. Every daemon is started by us and stopped by pid: sshd is our child; glusterd
runs in a network namespace of its own (`unshare -n`, loopback only: its bricks must
reach it on port 24007, which the namespace keeps off the machine's), and every process
left in that namespace after it stops (bricks, self-heal daemon) is ours and is stopped.
A peer that cannot run is left out of the table with its error in the notes."""
import os
import shutil
import signal
import subprocess
import time

from common import deferred_signals, sh
from issue16 import Target

PACKAGES = ["openssh-server", "sshfs", "glusterfs-server", "glusterfs-client", "bindfs"]
SSH_PORT = 21022  # from the bench's port range (21000-21099)
# Directories the packages' daemons use that we remove if they were not there before.
STATE_DIRS = ["/run/sshd", "/var/lib/glusterd", "/var/log/glusterfs", "/var/run/gluster"]
GLUSTERD_VOL = """volume management
    type mgmt/glusterd
    option working-directory {state}
    option transport-type socket
    option transport.socket.listen-port 24007
    option transport.address-family inet
    option ping-timeout 0
    option event-threads 1
    option base-port 21050
    option max-port 21098
end-volume
"""
# A brick host gluster accepts (it refuses 127.0.0.1 and localhost), still loopback.
BRICK_HOST = "127.0.0.2"


def installed_packages():
    out = subprocess.run(["dpkg-query", "-W", "-f", "${db:Status-Abbrev} ${Package}\n"],
                         capture_output=True, text=True, check=True).stdout
    return {p.split(":")[0] for st, p in (line.split() for line in out.splitlines() if line.strip())
            if st == "ii"}


def netns_of(pid):
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return None


def pids_in_netns(ns):
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and netns_of(p) == ns]


def wait_gone(pids, secs):
    deadline = time.time() + secs
    while time.time() < deadline:
        pids = [p for p in pids if os.path.exists(f"/proc/{p}") and not is_zombie(p)]
        if not pids:
            return []
        time.sleep(0.1)
    return pids


def is_zombie(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


class Peers:
    """A context manager: `targets` are the peers that came up, `notes` what did not
    (and how the peers were set up)."""

    def __init__(self, work, log):
        self.work, self.log = os.path.join(work, "peers"), log
        self.targets, self.notes = [], []
        self.added_pkgs, self.made_dirs, self.mounts = set(), [], []
        self.sshd, self.glusterd, self.gluster_ns, self.volumes = None, None, None, []

    def __enter__(self):
        try:
            os.makedirs(self.work)
            self.install()
            for name, start in (("bindfs", self.bindfs), ("sshfs", self.sshfs),
                                ("gluster", self.gluster)):
                try:
                    start()
                except (OSError, subprocess.SubprocessError, RuntimeError) as e:
                    msg = f"{name} could not run here: {e}"
                    self.log(f"  peers: {msg}")
                    self.notes.append(msg)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *_exc):
        with deferred_signals():
            for mnt in reversed(self.mounts):
                if subprocess.run(["umount", mnt], stderr=subprocess.DEVNULL).returncode != 0:
                    subprocess.run(["umount", "-l", mnt], stderr=subprocess.DEVNULL)
            self.mounts = []
            self.stop_gluster()
            if self.sshd:
                self.sshd.terminate()
                try:
                    self.sshd.wait(10)
                except subprocess.TimeoutExpired:
                    self.sshd.kill()
                    self.sshd.wait()
                self.sshd = None
            self.uninstall()
        return False

    # packages

    def install(self):
        before = installed_packages()
        missing = [p for p in PACKAGES if p not in before]
        self.made_dirs = [d for d in STATE_DIRS if not os.path.exists(d)]
        if not missing:
            return
        self.log(f"  peers: installing {' '.join(missing)}")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing]
        try:
            with deferred_signals():  # a half-done dpkg run could not be purged cleanly
                if subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL).returncode != 0:
                    subprocess.run(["apt-get", "update", "-q"], env=env, stdout=subprocess.DEVNULL)
                    subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, check=True)
        finally:
            self.added_pkgs = installed_packages() - before

    def uninstall(self):
        if self.added_pkgs:
            self.log(f"  peers: purging {' '.join(sorted(self.added_pkgs))}")
            env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
            subprocess.run(["apt-get", "purge", "-y", "-q", *sorted(self.added_pkgs)], env=env,
                           stdout=subprocess.DEVNULL)
            self.added_pkgs = set()
        for d in self.made_dirs:
            shutil.rmtree(d, ignore_errors=True)
        self.made_dirs = []

    # the peers

    def dirs(self, name):
        mnt, store = os.path.join(self.work, name), os.path.join(self.work, f"{name}.store")
        os.makedirs(mnt)
        os.makedirs(store)
        return mnt, store

    def bindfs(self):
        mnt, store = self.dirs("bindfs")
        sh("bindfs", store, mnt)
        self.mounts.append(mnt)
        self.targets.append(Target("bindfs", "FUSE passthrough (bindfs)", mnt))

    def sshfs(self):
        d = os.path.join(self.work, "ssh")
        os.makedirs(d)
        for key in ("host", "user"):
            sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", os.path.join(d, key))
        shutil.copy(os.path.join(d, "user.pub"), os.path.join(d, "authorized_keys"))
        conf = os.path.join(d, "sshd_config")
        with open(conf, "w") as f:
            f.write(f"Port {SSH_PORT}\nListenAddress 127.0.0.1\nHostKey {d}/host\n"
                    f"AuthorizedKeysFile {d}/authorized_keys\nPermitRootLogin prohibit-password\n"
                    "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
                    "StrictModes no\nPidFile none\nSubsystem sftp internal-sftp\n")
        os.makedirs("/run/sshd", exist_ok=True)  # its privilege separation directory
        with open(os.path.join(d, "sshd.log"), "w") as log:
            self.sshd = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", conf],
                                         stdout=log, stderr=log, start_new_session=True)
        mnt, store = self.dirs("sshfs")
        opts = (f"IdentityFile={d}/user,port={SSH_PORT},StrictHostKeyChecking=no,"
                "UserKnownHostsFile=/dev/null,BatchMode=yes")
        for attempt in range(50):  # until sshd listens
            if subprocess.run(["sshfs", "-o", opts, f"root@127.0.0.1:{store}", mnt],
                              stderr=subprocess.DEVNULL).returncode == 0:
                break
            if self.sshd.poll() is not None:
                raise RuntimeError(f"sshd exited ({self.sshd.returncode}): "
                                   + open(os.path.join(d, "sshd.log")).read()[-500:])
            time.sleep(0.2)
        else:
            raise RuntimeError("sshfs could not connect to our sshd")
        self.mounts.append(mnt)
        self.targets.append(Target("sshfs", "sshfs", mnt))

    def gluster(self):
        d = os.path.join(self.work, "gluster")
        os.makedirs(os.path.join(d, "state"))
        vol = os.path.join(d, "glusterd.vol")
        with open(vol, "w") as f:
            f.write(GLUSTERD_VOL.format(state=os.path.join(d, "state")))
        with open(os.path.join(d, "glusterd.out"), "w") as out:
            self.glusterd = subprocess.Popen(
                ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh",
                 "glusterd", "-N", "-f", vol, f"--log-file={d}/glusterd.log"],
                stdout=out, stderr=out, start_new_session=True)
        for _ in range(100):  # until the CLI reaches it
            time.sleep(0.1)
            if self.glusterd.poll() is not None:
                raise RuntimeError(f"glusterd exited ({self.glusterd.returncode}), see its log")
            self.gluster_ns = netns_of(self.glusterd.pid)
            if self.gluster_ns != netns_of(os.getpid()) and subprocess.run(
                    ["gluster", "--mode=script", "pool", "list"], capture_output=True).returncode == 0:
                break
        else:
            raise RuntimeError("glusterd did not answer within 10 s")
        for name, title, shape in (("gdisperse", "GlusterFS disperse 2+1", ["disperse", "3", "redundancy", "1"]),
                                   ("gdistrib", "GlusterFS distributed", [])):
            try:
                self.volume(d, name, shape)
                mnt = os.path.join(self.work, name)
                os.makedirs(mnt)
                self.in_ns("mount", "-t", "glusterfs", f"{BRICK_HOST}:/{name}", mnt)
                self.mounts.append(mnt)
                self.targets.append(Target(name, title, mnt))
            except (OSError, subprocess.SubprocessError, RuntimeError) as e:
                msg = f"{title} could not run here: {e}"
                self.log(f"  peers: {msg}")
                self.notes.append(msg)

    def in_ns(self, *cmd):
        r = subprocess.run(["nsenter", "-t", str(self.glusterd.pid), "-n", *cmd],
                           capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: {(r.stdout + r.stderr).strip()}")

    def volume(self, d, name, shape):
        bricks = []
        for i in range(3):
            b = os.path.join(d, f"{name}-brick{i}")
            os.makedirs(b)
            bricks.append(f"{BRICK_HOST}:{b}")
        for cmd in (["create", name, *shape, *bricks, "force"], ["start", name]):
            r = subprocess.run(["gluster", "--mode=script", "volume", *cmd],
                               capture_output=True, text=True, timeout=120)
            if r.returncode != 0:
                raise RuntimeError(f"gluster volume {' '.join(cmd[:2])}: {(r.stdout + r.stderr).strip()}")
            if cmd[0] == "create":
                self.volumes.append(name)

    def stop_gluster(self):
        if not self.glusterd:
            return
        for name in self.volumes:
            subprocess.run(["gluster", "--mode=script", "volume", "stop", name],
                           capture_output=True, timeout=120)
        self.volumes = []
        ns = self.gluster_ns if self.gluster_ns != netns_of(os.getpid()) else None
        self.glusterd.terminate()
        try:
            self.glusterd.wait(10)
        except subprocess.TimeoutExpired:
            self.glusterd.kill()
            self.glusterd.wait()
        self.glusterd = None
        if ns:  # bricks and daemons glusterd started, all in its namespace
            left = pids_in_netns(ns)
            for sig in (signal.SIGTERM, signal.SIGKILL):
                for pid in left:
                    if netns_of(pid) == ns:
                        try:
                            os.kill(pid, sig)
                        except ProcessLookupError:
                            pass
                left = wait_gone(left, 5)
                if not left:
                    break
