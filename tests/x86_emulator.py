"""Runs a static x86-64 Linux program on an emulated CPU of a named model (Bochs, through bochscpu-python).

The C kernels have AVX-512, AVX512-VNNI, AVX-VNNI and AVX512-BF16 branches that only such CPUs can run, and
the machines the tests run on often have none of them. Bochs emulates those instruction sets (softfloat, IEEE
arithmetic) and refuses, with an invalid-opcode exception, any instruction its CPU model lacks, as a real CPU
of that model would. This is a minimal Linux for one single-threaded program built with `gcc -static`
(no OpenMP: tests/serial/omp.h): its ELF segments, a stack with argv and the auxiliary vector, and the
system calls glibc's start-up, malloc and stdio make. Files may be created in OUT_DIR only.

    LD_PRELOAD=bochs_model.so python x86_emulator.py OUT_DIR PROGRAM [ARGS...]

`bochs_model.so` (tests/bochs_model.c, built with -DMODEL=<index in BOCHS_MODELS>) picks the CPU model.
Exit status: the program's; 132 when it ran an instruction the model lacks (as SIGILL would); 139 on any
other CPU exception.
"""

from __future__ import annotations

import errno
import os
import struct
import sys

PAGE = 4096
# Bochs's CPU models, in the order of bochscpu's `cpu.model` list (bochscpu src/sim.rs; default tigerlake)
BOCHS_MODELS = {"tigerlake": 29, "sapphire_rapids": 30, "arrow_lake": 31}

GATE = 0x7FFF_0000_0000  # the system-call entry (LSTAR): a page of `hlt`, where the run stops
STACK_TOP, STACK_SIZE = 0x7FFF_F000_0000, 1 << 20
HEAP_SIZE = 64 << 20  # brk's reach
MMAP_BASE, MMAP_SIZE = 0x7F00_0000_0000, 256 << 20  # anonymous mappings, never reused
PML4 = 0x10_0000  # guest-physical address of the page tables
INVALID_OPCODE = 6

# x86-64 Linux system-call numbers used below
READ, WRITE, CLOSE, FSTAT, MMAP, MPROTECT, MUNMAP, BRK, IOCTL, MADVISE = 0, 1, 3, 5, 9, 10, 11, 12, 16, 28
EXIT, READLINK, ARCH_PRCTL, SET_TID_ADDRESS, EXIT_GROUP, OPENAT, NEWFSTATAT = 60, 89, 158, 218, 231, 257, 262
SET_ROBUST_LIST, PRLIMIT64, GETRANDOM, READLINKAT, RSEQ = 273, 302, 318, 267, 334
ARCH_SET_FS, MAP_ANONYMOUS = 0x1002, 0x20


class Exited(Exception):
    pass


class Memory:
    """Guest pages, mapped at fixed virtual addresses before the run (identity of nothing; 4 KB pages)."""

    def __init__(self, mem):
        self.mem, self.table, self.gpa, self.pages = mem, mem.PageMapLevel4Table(), 0x1000_0000, set()

    def map(self, va: int, size: int) -> None:
        for page in range(va & ~(PAGE - 1), va + size, PAGE):
            if page not in self.pages:
                self.mem.page_insert(self.gpa, self.mem.allocate_host_page())
                self.table.insert(page, self.gpa, 1)  # writable
                self.pages.add(page)
                self.gpa += PAGE

    def commit(self) -> None:
        for hva, gpa in self.table.commit(PML4):
            self.mem.page_insert(gpa, hva)

    def write(self, va: int, data: bytes) -> None:
        if data and not self.mem.virt_write(PML4, va, bytearray(data)):
            raise ValueError(f"write to unmapped {va:#x}")

    def read(self, va: int, n: int) -> bytes:
        return bytes(self.mem.virt_read(PML4, va, n)) if n else b""

    def string(self, va: int) -> bytes:
        out = b""
        while True:
            chunk = self.read(va, min(64, PAGE - va % PAGE))
            if b"\0" in chunk:
                return out + chunk[: chunk.index(b"\0")]
            out, va = out + chunk, va + len(chunk)


def load(memory: Memory, elf: bytes, argv: list[str]) -> tuple[int, int, int]:
    """Maps a static, non-PIE ELF and its stack; returns (entry, stack pointer, first brk)."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or struct.unpack_from("<H", elf, 0x10)[0] != 2:
        raise ValueError("not a static 64-bit ELF executable (build with gcc -static, no -static-pie)")
    entry, phoff = struct.unpack_from("<QQ", elf, 0x18)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    segments, end, base = [], 0, None
    for i in range(phnum):
        kind, _, offset, vaddr, _, filesz, memsz, _ = struct.unpack_from("<IIQQQQQQ", elf, phoff + i * phentsize)
        if kind == 1:  # PT_LOAD
            memory.map(vaddr, memsz)
            segments.append((vaddr, elf[offset: offset + filesz]))
            end, base = max(end, vaddr + memsz), vaddr - offset if base is None else base
    brk = (end + PAGE - 1) & ~(PAGE - 1)
    memory.map(brk, HEAP_SIZE)
    memory.map(MMAP_BASE, MMAP_SIZE)
    memory.map(STACK_TOP - STACK_SIZE, STACK_SIZE)
    memory.map(GATE, PAGE)
    memory.commit()
    for vaddr, data in segments:
        memory.write(vaddr, data)
    memory.write(GATE, b"\xf4" * 16)  # hlt

    sp, pointers = STACK_TOP - PAGE, []
    for arg in argv:
        sp -= len(arg.encode()) + 1
        memory.write(sp, arg.encode() + b"\0")
        pointers.append(sp)
    sp = (sp - 16) & ~15
    memory.write(sp, os.urandom(16))  # AT_RANDOM's bytes
    # auxiliary vector: the program headers (for TLS), page size, entry, AT_RANDOM, not setuid, uids 0
    auxv = [3, base + phoff, 4, phentsize, 5, phnum, 6, PAGE, 9, entry, 25, sp, 23, 0, 11, 0, 12, 0, 13, 0, 14, 0,
            0, 0]
    words = [len(argv), *pointers, 0, 0, *auxv]  # argc, argv, NULL, no environment, NULL, auxv
    sp = (sp - 8 * len(words)) & ~15
    memory.write(sp, struct.pack(f"<{len(words)}Q", *words))
    return entry, sp, brk


def start_state(bochscpu, entry: int, sp: int):
    state = bochscpu.State()
    bochscpu.cpu.set_long_mode(state)
    state.cr3 = PML4
    state.cr0 = 0x8000_0033  # paging, numeric errors, x87 present, monitor coprocessor, protected mode
    state.cr4 = 0x4_0620  # OSXSAVE, OSXMMEXCPT, OSFXSR, PAE
    state.xcr0 = 0xE7  # x87, SSE, AVX, and AVX-512's opmask, upper ZMM and ZMM16-31 state
    state.efer = 0xD01  # no-execute, long mode active and enabled, SYSCALL
    state.lstar, state.star, state.sfmask = GATE, (0x10 << 48) | (0x08 << 32), 0
    state.mxcsr, state.fpcw, state.rflags = 0x1F80, 0x37F, 0x202
    state.rsp, state.rip = sp, entry

    def segment(selector: int, attr: int):
        s = bochscpu.Segment()
        s.present, s.selector, s.base, s.limit, s.attr = True, selector, 0, 0xFFFF_FFFF, attr
        return s

    state.cs = segment(0x08, 0x209B)  # 64-bit code, ring 0 (SYSCALL's selectors, so nothing changes on entry)
    state.ds = state.es = state.ss = state.fs = state.gs = segment(0x10, 0xC093)
    return state


class Linux:
    """The system calls of one process; `files` are the host files it opened, by descriptor."""

    def __init__(self, memory: Memory, cpu, brk: int, out_dir: str):
        self.memory, self.cpu, self.out_dir = memory, cpu, os.path.realpath(out_dir)
        self.brk0 = self.brk = brk
        self.mmap = MMAP_BASE
        self.files: dict[int, object] = {1: sys.stdout.buffer, 2: sys.stderr.buffer}

    def call(self, nr: int, a: list[int]) -> int:
        if nr == BRK:
            if self.brk0 <= a[0] <= self.brk0 + HEAP_SIZE:
                self.brk = a[0]
            return self.brk
        if nr == MMAP:
            size = (a[1] + PAGE - 1) & ~(PAGE - 1)
            if not a[3] & MAP_ANONYMOUS:
                return -errno.ENODEV
            if self.mmap + size > MMAP_BASE + MMAP_SIZE:
                return -errno.ENOMEM
            va, self.mmap = self.mmap, self.mmap + size
            return va  # pages never handed out before: still zero
        if nr in (MPROTECT, MUNMAP, MADVISE, SET_ROBUST_LIST):
            return 0
        if nr == ARCH_PRCTL and a[0] == ARCH_SET_FS:
            state = self.cpu.state
            fs = state.fs
            fs.base = a[1]
            state.fs = fs
            self.cpu.state = state
            return 0
        if nr == SET_TID_ADDRESS:
            return 1
        if nr == GETRANDOM:
            self.memory.write(a[0], os.urandom(a[1]))
            return a[1]
        if nr == WRITE:
            if a[0] not in self.files:
                return -errno.EBADF
            self.files[a[0]].write(self.memory.read(a[1], a[2]))
            return a[2]
        if nr == OPENAT:
            path = os.path.realpath(self.memory.string(a[1]).decode())
            if os.path.dirname(path) != self.out_dir or a[2] & 3 == 0:
                return -errno.EACCES  # new files in OUT_DIR, for writing, only
            fd = max(self.files) + 1
            self.files[fd] = open(path, "wb")
            return fd
        if nr == CLOSE:
            if a[0] > 2 and a[0] in self.files:
                self.files.pop(a[0]).close()
            return 0
        if nr in (FSTAT, NEWFSTATAT):  # every descriptor is a regular file
            stat = bytearray(144)
            struct.pack_into("<I", stat, 24, 0o100644)  # st_mode
            struct.pack_into("<q", stat, 56, PAGE)  # st_blksize
            self.memory.write(a[1] if nr == FSTAT else a[2], bytes(stat))
            return 0
        if nr == IOCTL:
            return -errno.ENOTTY
        if nr in (EXIT, EXIT_GROUP):
            raise Exited(a[0] & 0xFF)
        return -errno.ENOSYS  # readlink, prlimit64, rseq, ...: glibc does without


def run(program: str, args: list[str], out_dir: str) -> int:
    import bochscpu
    import bochscpu.cpu
    import bochscpu.memory

    memory = Memory(bochscpu.memory)
    with open(program, "rb") as f:
        entry, sp, brk = load(memory, f.read(), [program, *args])
    session = bochscpu.Session()
    session.missing_page_handler = lambda gpa: (_ for _ in ()).throw(RuntimeError(f"no page at {gpa:#x}"))
    session.cpu.state = start_state(bochscpu, entry, sp)
    faults = []
    hook = bochscpu.Hook()
    hook.exception = lambda s, cpu, vector, code: (faults.append((int(vector), s.cpu.rip)), s.stop())
    hook.hlt = lambda s, cpu: s.stop()
    linux = Linux(memory, session.cpu, brk, out_dir)
    while True:
        session.run([hook])
        cpu = session.cpu
        if faults:
            vector, rip = faults[0]
            print(f"x86_emulator: CPU exception {vector} at {rip:#x}", file=sys.stderr)
            return 132 if vector == INVALID_OPCODE else 139
        if cpu.rip != GATE + 1:
            print(f"x86_emulator: stopped at {cpu.rip:#x}", file=sys.stderr)
            return 139
        try:
            result = linux.call(cpu.rax, [cpu.rdi, cpu.rsi, cpu.rdx, cpu.r10, cpu.r8, cpu.r9])
        except Exited as done:
            sys.stdout.flush()
            return done.args[0]
        cpu.rax = result & 0xFFFF_FFFF_FFFF_FFFF
        cpu.rip, cpu.rflags = cpu.rcx, cpu.r11  # back after the `syscall` instruction


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    sys.exit(run(sys.argv[2], sys.argv[3:], sys.argv[1]))
