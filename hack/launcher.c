/*
 * The launcher of the self-contained wrapper (see hack/build-wrapper): the only files of the tree that the kernel
 * runs directly are copies of this program.
 *
 * It is static and uses no C library, so it starts in any image of its architecture: glibc, musl, busybox-only
 * or scratch, and as a script interpreter (`#!/step-tracer/bin/step-tracer run-script ...`), which the kernel
 * only allows for binaries it can load without the image's help. Its only job is to start the private runtime
 * without touching the environment the step's command will inherit. As OUTDIR/step-tracer it runs
 *
 *   R/step-tracer --library-path R/lib --argv0 R/python3 R/bin/python3 -I -S -B -X frozen_modules=on -X utf8
 *       R/boot.py N MOVED... ARGS...                                                          (R = OUTDIR/runtime)
 *
 * R/step-tracer is the runtime's own dynamic loader (ld.so) under a name that makes `ps` show "step-tracer";
 * running it explicitly with --library-path means no LD_LIBRARY_PATH and no fixed loader path. The variables
 * that would change how our loader or Python starts (LD_PRELOAD of a library built for the image's libc,
 * LD_DEBUG noise on the step's stderr, Python's PEP 538 rewrite of LC_CTYPE) are moved out of the environment
 * into N arguments; boot.py puts them back into os.environ, so the step's command gets them unchanged.
 *
 * As R/python3 it is the runtime's plain interpreter (sys.executable, for code that starts `sys.executable -m
 * ...`): R/step-tracer --library-path R/lib --argv0 R/python3 R/bin/python3 ARGS, environment untouched.
 *
 * Its own path comes from /proc/self/exe (symlinks resolved), else from argv[0] when that holds a slash.
 */

#define AT_FDCWD (-100)
#define PATH_BYTES 4096

#if defined(__x86_64__)
#define NR_READLINKAT 267
#define NR_EXECVE 59
#define NR_WRITE 1
#define NR_EXIT_GROUP 231
#define NR_GETCWD 79
__asm__(".text\n"
        ".global _start\n"
        "_start:\n"
        "  xor %rbp, %rbp\n"
        "  mov %rsp, %rdi\n"
        "  andq $-16, %rsp\n"
        "  call launcher_main\n"
        "  hlt\n");

static long sys3(long n, long a, long b, long c) {
    long ret;
    __asm__ volatile("syscall" : "=a"(ret) : "a"(n), "D"(a), "S"(b), "d"(c) : "rcx", "r11", "memory");
    return ret;
}

static long sys4(long n, long a, long b, long c, long d) {
    long ret;
    register long r10 __asm__("r10") = d;
    __asm__ volatile("syscall" : "=a"(ret) : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10) : "rcx", "r11", "memory");
    return ret;
}

#elif defined(__aarch64__)
#define NR_READLINKAT 78
#define NR_EXECVE 221
#define NR_WRITE 64
#define NR_EXIT_GROUP 94
#define NR_GETCWD 17
__asm__(".text\n"
        ".global _start\n"
        "_start:\n"
        "  mov x29, #0\n"
        "  mov x30, #0\n"
        "  mov x0, sp\n"
        "  and sp, x0, #-16\n"
        "  bl launcher_main\n"
        "  brk #0\n");

static long sys4(long n, long a, long b, long c, long d) {
    register long x8 __asm__("x8") = n;
    register long x0 __asm__("x0") = a;
    register long x1 __asm__("x1") = b;
    register long x2 __asm__("x2") = c;
    register long x3 __asm__("x3") = d;
    __asm__ volatile("svc 0" : "+r"(x0) : "r"(x8), "r"(x1), "r"(x2), "r"(x3) : "memory");
    return x0;
}

static long sys3(long n, long a, long b, long c) { return sys4(n, a, b, c, 0); }

#elif defined(__powerpc64__) && defined(_CALL_ELF) && _CALL_ELF == 2
#define NR_READLINKAT 296
#define NR_EXECVE 11
#define NR_WRITE 4
#define NR_EXIT_GROUP 234
#define NR_GETCWD 182
/* ELFv2: the kernel puts the entry address in r12, from which the TOC pointer (r2) is derived. */
__asm__(".text\n"
        ".global _start\n"
        ".type _start, @function\n"
        "_start:\n"
        "  addis 2, 12, .TOC.-_start@ha\n"
        "  addi 2, 2, .TOC.-_start@l\n"
        "  mr 3, 1\n"
        "  clrrdi 1, 1, 4\n"
        "  li 0, 0\n"
        "  stdu 0, -32(1)\n"
        "  mtlr 0\n"
        "  bl launcher_main\n"
        "  nop\n"
        "  trap\n");

static long sys4(long n, long a, long b, long c, long d) {
    register long r0 __asm__("r0") = n;
    register long r3 __asm__("r3") = a;
    register long r4 __asm__("r4") = b;
    register long r5 __asm__("r5") = c;
    register long r6 __asm__("r6") = d;
    __asm__ volatile("sc\n\tbns+ 1f\n\tneg %1, %1\n1:"
                     : "+r"(r0), "+r"(r3), "+r"(r4), "+r"(r5), "+r"(r6)
                     :
                     : "memory", "cr0", "r7", "r8", "r9", "r10", "r11", "r12", "ctr", "xer");
    return r3;
}

static long sys3(long n, long a, long b, long c) { return sys4(n, a, b, c, 0); }

#elif defined(__s390x__)
#define NR_READLINKAT 298
#define NR_EXECVE 11
#define NR_WRITE 4
#define NR_EXIT_GROUP 248
#define NR_GETCWD 183
__asm__(".text\n"
        ".global _start\n"
        "_start:\n"
        "  lgr %r2, %r15\n"
        "  aghi %r15, -160\n"
        "  lghi %r0, 0\n"
        "  stg %r0, 0(%r15)\n"
        "  brasl %r14, launcher_main\n"
        "  .word 0\n");

static long sys4(long n, long a, long b, long c, long d) {
    register long r1 __asm__("r1") = n;
    register long r2 __asm__("r2") = a;
    register long r3 __asm__("r3") = b;
    register long r4 __asm__("r4") = c;
    register long r5 __asm__("r5") = d;
    __asm__ volatile("svc 0" : "+r"(r2) : "r"(r1), "r"(r3), "r"(r4), "r"(r5) : "memory");
    return r2;
}

static long sys3(long n, long a, long b, long c) { return sys4(n, a, b, c, 0); }

#else
#error "hack/launcher.c: add this architecture's _start and system calls (see the four above)"
#endif

/* The compiler may emit calls to these for loops and array initialisers even with -ffreestanding. */
void *memcpy(void *dst, const void *src, unsigned long n) {
    char *d = dst;
    const char *s = src;
    while (n--) *d++ = *s++;
    return dst;
}

void *memset(void *dst, int c, unsigned long n) {
    char *d = dst;
    while (n--) *d++ = (char)c;
    return dst;
}

static unsigned long length(const char *s) {
    unsigned long n = 0;
    while (s[n]) n++;
    return n;
}

static int starts_with(const char *s, const char *prefix) {
    while (*prefix)
        if (*s++ != *prefix++) return 0;
    return 1;
}

static void say(const char *s) { sys3(NR_WRITE, 2, (long)s, (long)length(s)); }

static __attribute__((noreturn)) void leave(int code) {
    for (;;) sys3(NR_EXIT_GROUP, code, 0, 0);
}

/* Copies `src` to `dst` (of PATH_BYTES), returns the end; exits when the path would not fit. */
static char *append(char *dst, char *end, const char *src) {
    while (*src) {
        if (end - dst >= PATH_BYTES - 1) {
            say("step-tracer: installation path too long\n");
            leave(126);
        }
        *end++ = *src++;
    }
    *end = 0;
    return end;
}

static const char *const MOVED[] = {
    "LD_PRELOAD=", "LD_AUDIT=", "LD_DEBUG=", "LD_DEBUG_OUTPUT=", "LD_PROFILE=", "LD_PROFILE_OUTPUT=", "LC_CTYPE=", 0,
};

static int moved(const char *entry) {
    for (int i = 0; MOVED[i]; i++)
        if (starts_with(entry, MOVED[i])) return 1;
    return 0;
}

static int has_slash(const char *s) {
    for (; *s; s++)
        if (*s == '/') return 1;
    return 0;
}

/* The path of this file. */
static void own_path(char *path, const char *argv0) {
    long n = sys4(NR_READLINKAT, AT_FDCWD, (long)"/proc/self/exe", (long)path, PATH_BYTES - 1);
    if (n > 0 && n < PATH_BYTES - 1) {
        path[n] = 0;
    } else if (argv0 && argv0[0] == '/') {
        append(path, path, argv0);
    } else if (argv0 && has_slash(argv0) && sys3(NR_GETCWD, (long)path, PATH_BYTES, 0) > 0) {
        append(path, append(path, path + length(path), "/"), argv0);
    } else {
        say("step-tracer: cannot find its own location (mount /proc, or run it by its path)\n");
        leave(126);
    }
}

static int same(const char *a, const char *b) {
    while (*a && *a == *b) a++, b++;
    return *a == *b;
}

static const char *error_name(long err) {
    switch (err) {
    case 2: return "not found (incomplete installation?)";
    case 7: return "argument list too long";
    case 8: return "exec format error (built for another architecture?)";
    case 12: return "out of memory";
    case 13: return "permission denied (noexec mount?)";
    default: return "cannot execute";
    }
}

__attribute__((used)) void launcher_main(long *sp) {
    int argc = (int)sp[0];
    char **argv = (char **)(sp + 1);
    char **envp = argv + argc + 1;

    char runtime[PATH_BYTES], loader[PATH_BYTES], libdir[PATH_BYTES], argv0[PATH_BYTES], python[PATH_BYTES];
    char boot[PATH_BYTES];
    own_path(runtime, argc > 0 ? argv[0] : 0);
    char *slash = runtime;
    for (char *p = runtime; *p; p++)
        if (*p == '/') slash = p;
    int python_mode = same(slash + 1, "python3");
    if (python_mode)
        *slash = 0;
    else
        append(runtime, slash, "/runtime");
    append(loader, append(loader, loader, runtime), "/step-tracer");
    append(libdir, append(libdir, libdir, runtime), "/lib");
    append(argv0, append(argv0, argv0, runtime), "/python3");
    append(python, append(python, python, runtime), "/bin/python3");
    append(boot, append(boot, boot, runtime), "/boot.py");

    int envc = 0, nmoved = 0;
    while (envp[envc]) {
        nmoved += !python_mode && moved(envp[envc]);
        envc++;
    }
    static const char *const isolated[] = {"-I", "-S", "-B", "-X", "frozen_modules=on", "-X", "utf8"};
    enum { NISOLATED = sizeof isolated / sizeof isolated[0] };
    char *nargv[6 + NISOLATED + 2 + nmoved + argc + 1];
    char *nenvp[envc - nmoved + 1];
    char count[12];

    int k = 0;
    nargv[k++] = loader;
    nargv[k++] = "--library-path";
    nargv[k++] = libdir;
    nargv[k++] = "--argv0";
    nargv[k++] = argv0;
    nargv[k++] = python;
    if (!python_mode) {
        for (int i = 0; i < NISOLATED; i++) nargv[k++] = (char *)isolated[i];
        nargv[k++] = boot;
        int digits = 0;
        char rev[12];
        int v = nmoved;
        do {
            rev[digits++] = (char)('0' + v % 10);
            v /= 10;
        } while (v);
        for (int i = 0; i < digits; i++) count[i] = rev[digits - 1 - i];
        count[digits] = 0;
        nargv[k++] = count;
    }
    int e = 0;
    for (int i = 0; i < envc; i++) {
        if (!python_mode && moved(envp[i]))
            nargv[k++] = envp[i];
        else
            nenvp[e++] = envp[i];
    }
    nenvp[e] = 0;
    for (int i = 1; i < argc; i++) nargv[k++] = argv[i];
    nargv[k] = 0;

    long err = -sys3(NR_EXECVE, (long)loader, (long)nargv, (long)nenvp);
    say("step-tracer: cannot start its runtime ");
    say(loader);
    say(": ");
    say(error_name(err));
    say("\n");
    leave(err == 2 ? 127 : 126);
}
