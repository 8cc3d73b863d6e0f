#include <doctest/doctest.h>
#include <loom/loom.h>
