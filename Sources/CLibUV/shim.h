// The one door to libuv: MeshRuntime alone imports this module.
#include <uv.h>
