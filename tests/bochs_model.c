/* Preloaded into the process that runs tests/x86_emulator.py: picks bochscpu's CPU model, and supplies two glibc
 * 2.38 symbols its wheel needs where the system's glibc is older.
 *
 *     cc -shared -fPIC -DMODEL=<index> bochs_model.c -o bochs_model.so -ldl
 *
 * bochscpu creates its `cpu.model` parameter with a fixed default (tigerlake) through sim_new_param_enum, called
 * through the module's GOT, so a preloaded definition is the one it calls: it passes MODEL on to the module's own. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <link.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int find_module(struct dl_phdr_info *info, size_t size, void *found) {
    (void)size;
    if (strstr(info->dlpi_name, "_bochscpu")) {
        *(const char **)found = info->dlpi_name;
        return 1;
    }
    return 0;
}

void *sim_new_param_enum(const char *name, const char **values, unsigned index) {
    static void *(*real)(const char *, const char **, unsigned);
    if (!real) {
        const char *path = NULL;
        dl_iterate_phdr(find_module, &path);
        void *module = path ? dlopen(path, RTLD_NOLOAD | RTLD_LAZY) : NULL;
        real = module ? (void *(*)(const char *, const char **, unsigned))dlsym(module, "sim_new_param_enum") : NULL;
        if (!real) {
            fprintf(stderr, "bochs_model: bochscpu's sim_new_param_enum not found\n");
            abort();
        }
    }
    return real(name, values, strcmp(name, "model") == 0 ? MODEL : index);
}

unsigned long long __isoc23_strtoull(const char *s, char **end, int base) { return strtoull(s, end, base); }

int __isoc23_sscanf(const char *s, const char *format, ...) {
    va_list args;
    va_start(args, format);
    const int n = vsscanf(s, format, args);
    va_end(args);
    return n;
}
