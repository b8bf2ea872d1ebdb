// The one door to libsodium: MeshCrypto alone imports this module.
#include <sodium.h>
