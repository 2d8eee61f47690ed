/* net.c — being written. */
#include "util.h"
