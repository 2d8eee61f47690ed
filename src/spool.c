/* spool.c — being written. */
#include "util.h"
