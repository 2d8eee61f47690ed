/* store_imap.c — being written. */
#include "util.h"
