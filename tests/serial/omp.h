/* OpenMP's run-time calls for a build without -fopenmp (tests/x86_emulator.py runs one thread): the pragmas are
 * ignored and one thread does all the work, as OpenMP's own single-thread case does. */
#ifndef FASTBARK_SERIAL_OMP_H
#define FASTBARK_SERIAL_OMP_H
static inline int omp_get_thread_num(void) { return 0; }
static inline int omp_get_num_threads(void) { return 1; }
static inline int omp_get_max_threads(void) { return 1; }
#endif
