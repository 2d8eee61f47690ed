/* probe.c — meson compiles this to learn whether clang can build libFuzzer
 * targets here (tests/meson.build registers the fuzz suite only then). */
#include <stddef.h>
#include <stdint.h>
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	(void)data;
	(void)size;
	return 0;
}
