"""fsx-style check of one file (after Apple's and Linux's fsx): random reads, writes,
truncates, and reads and writes through mmap, for a given time, every read compared
with a model of the file kept in memory. A wrong byte raises `WrongBytes`.

Operations, chosen uniformly: read (pread), write (pwrite, may extend the file),
truncate (ftruncate to a random size, down or up), mapread (mmap of the file, a range
read through it), mapwrite (the file extended first if the range passes its end, as
fsx does, then written through a shared mapping and msync'd). Lengths are 1 byte to
64 KiB (fsx's default `-o 65536`); offsets fall anywhere below the file's maximum size
(8 MiB by default). At the end the file is closed, reopened and read back whole."""
import ctypes
import mmap
import os
import random
import time

MAX_OP = 64 * 1024
PAGE = mmap.PAGESIZE


class WrongBytes(Exception):
    """The file gave back bytes that differ from the model."""


def first_difference(got, want):
    n = min(len(got), len(want))
    for i in range(n):
        if got[i] != want[i]:
            return i
    return n


class Fsx:
    """One run on `path` (created or emptied), its model a bytearray."""

    def __init__(self, path, max_size, seed):
        self.path, self.max, self.rng = path, max_size, random.Random(seed)
        # The model: the file's bytes in model[:size]; model[size:] kept zero, so that
        # growing the file (a write past its end, a truncate up) costs nothing.
        self.model, self.size = bytearray(max_size), 0
        self.base = ctypes.addressof((ctypes.c_char * max_size).from_buffer(self.model))
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        self.ops = 0
        self.noise = self.rng.randbytes(4 * MAX_OP)

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def check(self, what, off, got):
        want = bytes(self.model[off:min(off + len(got), self.size)])
        if got != want:
            at = off + first_difference(got, want)
            raise WrongBytes(f"{self.path}: op {self.ops} ({what} at {off}, {len(got)} bytes): "
                             f"first wrong byte at offset {at} (file size {self.size})")

    def range(self, within=None):
        top = self.max if within is None else within
        off = self.rng.randrange(top)
        return off, self.rng.randint(1, min(MAX_OP, top - off))

    def data(self, n):
        # a random window of a random buffer: new bytes for every write at no cost
        at = self.rng.randrange(len(self.noise) - n + 1)
        return self.noise[at:at + n]

    def read(self):
        if not self.size:
            return
        off, n = self.range(self.size)
        got = os.pread(self.fd, n, off)
        if len(got) != n:
            raise WrongBytes(f"{self.path}: op {self.ops}: read at {off} gave {len(got)} of {n} bytes "
                             f"(file size {self.size})")
        self.check("read", off, got)

    def write(self):
        off, n = self.range()
        buf = self.data(n)
        if os.pwrite(self.fd, buf, off) != n:
            raise WrongBytes(f"{self.path}: op {self.ops}: short write at {off}")
        self.put(off, buf)

    def put(self, off, buf):
        end = off + len(buf)
        self.model[off:end] = buf
        self.size = max(self.size, end)

    def truncate(self):
        size = self.rng.randrange(self.max + 1)
        os.ftruncate(self.fd, size)
        if size < self.size:
            ctypes.memset(self.base + size, 0, self.size - size)  # megabytes: at C speed
        self.size = size

    def mapped(self, off, n):
        """A shared mapping of the pages covering [off, off + n), and where off falls in it."""
        start = off - off % PAGE
        try:
            return mmap.mmap(self.fd, off + n - start, mmap.MAP_SHARED,
                             mmap.PROT_READ | mmap.PROT_WRITE, offset=start), off - start
        except ValueError as e:  # Python checks the range against fstat's size
            raise WrongBytes(f"{self.path}: op {self.ops}: mmap of [{off}, {off + n}): {e}: "
                             f"fstat says {os.fstat(self.fd).st_size} bytes, the model {self.size}")

    def mapread(self):
        if not self.size:
            return
        off, n = self.range(self.size)
        m, at = self.mapped(off, n)
        try:
            got = m[at:at + n]
        finally:
            m.close()
        self.check("mapread", off, got)

    def mapwrite(self):
        off, n = self.range()
        if off + n > self.size:
            os.ftruncate(self.fd, off + n)
            self.size = off + n
        buf = self.data(n)
        m, at = self.mapped(off, n)
        try:
            m[at:at + n] = buf
            m.flush()
        finally:
            m.close()
        self.put(off, buf)

    def run(self, seconds):
        ops = (self.read, self.write, self.truncate, self.mapread, self.mapwrite)
        t = time.perf_counter()
        end = t + seconds
        while time.perf_counter() < end:
            self.rng.choice(ops)()
            self.ops += 1
        took = time.perf_counter() - t
        self.verify_whole()
        return self.ops / took

    def verify_whole(self):
        """Closes the file, reopens it and compares every byte and the size."""
        self.close()
        size = os.path.getsize(self.path)
        if size != self.size:
            raise WrongBytes(f"{self.path}: size {size} after the run, the model has {self.size}")
        with open(self.path, "rb", buffering=0) as f:
            off = 0
            while off < size:
                got = f.read(1 << 20)
                if not got:
                    raise WrongBytes(f"{self.path}: short read at {off} of {size}")
                self.check("final read", off, got)
                off += len(got)


def fsx(path, seconds, max_size=8 << 20, seed=1):
    """Ops/s of an fsx run of `seconds` on `path` (removed after); raises `WrongBytes`."""
    f = Fsx(path, max_size, seed)
    try:
        return f.run(seconds)
    finally:
        f.close()
        os.unlink(path)
