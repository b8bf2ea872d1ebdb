/* A stand-in for libnvidia-ml.so.1 with the entry points GPUMesh's NVML door uses, answering
 * like a two-GPU H100 host. Compiled by the detection tests to exercise dlopen/dlsym for real. */
#include <string.h>
typedef struct device { int index; } *nvmlDevice_t;
static struct device devices[2] = {{0}, {1}};
static int started = 0;
int nvmlInit_v2(void) { started = 1; return 0; }
int nvmlShutdown(void) { started = 0; return 0; }
const char *nvmlErrorString(int code) { return code == 1 ? "Uninitialized" : "Unknown Error"; }
int nvmlDeviceGetCount_v2(unsigned int *n) { if (!started) return 1; *n = 2; return 0; }
int nvmlDeviceGetHandleByIndex_v2(unsigned int i, nvmlDevice_t *d) { if (i > 1) return 2; *d = &devices[i]; return 0; }
int nvmlDeviceGetName(nvmlDevice_t d, char *out, unsigned int len) { strncpy(out, "NVIDIA H100 80GB HBM3", len); return 0; }
int nvmlDeviceGetUUID(nvmlDevice_t d, char *out, unsigned int len) {
    strncpy(out, d->index == 0 ? "GPU-0aa1b2c3-d4e5-f607-1829-3a4b5c6d7e80" : "GPU-1bb1b2c3-d4e5-f607-1829-3a4b5c6d7e81", len); return 0; }
int nvmlDeviceGetMemoryInfo(nvmlDevice_t d, unsigned long long *m) {
    m[0] = 85520809984ULL; m[1] = d->index == 0 ? 84986298368ULL : 1073741824ULL; m[2] = m[0] - m[1]; return 0; }
int nvmlDeviceGetCudaComputeCapability(nvmlDevice_t d, int *major, int *minor) { *major = 9; *minor = 0; return 0; }
int nvmlSystemGetDriverVersion(char *out, unsigned int len) { strncpy(out, "550.54.15", len); return 0; }
int nvmlSystemGetCudaDriverVersion(int *v) { *v = 12040; return 0; }
