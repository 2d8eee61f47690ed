/* flags.c — being written. */
#include "util.h"
