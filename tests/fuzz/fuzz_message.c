/* fuzz_message.c — libFuzzer harness: header lookup, Message-ID, dates on
 * arbitrary bytes (NULs and bare LFs included; the buffer is exactly `size`
 * long, so any read past it is caught by ASan). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "message.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *m = malloc(size ? size : 1);
	memcpy(m, data, size);
	size_t hl = msg_header_len(m, size);
	if (hl > size)
		abort();
	free(msg_header_get(m, hl, "Received"));
	free(msg_header_get(m, hl, "Subject"));
	free(msg_message_id(m, hl));
	int64_t t;
	int tz;
	if (msg_arrival_date(m, hl, &t, &tz) == 0) {
		char out[32];
		imap_date_format(out, t, tz);
	}
	if (msg_date_parse(m, size, &t, &tz) == 0) {
		char out[32];
		imap_date_format(out, t, tz);
	}
	free(m);
	return 0;
}
