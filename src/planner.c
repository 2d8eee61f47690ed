/* planner.c — being written. */
#include "util.h"
