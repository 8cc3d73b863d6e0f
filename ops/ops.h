// The op library: plain functions on Tensors, like torch:: functions.
// Each ops/X.cpp holds a group of ops, each op's forward kernel call and its
// backward rule side by side; ops/X.h declares them. The SIMD kernels they
// call live in ops/kernels/.
#pragma once

#include <loom/ops/attention.h>
#include <loom/ops/dropout.h>
#include <loom/ops/elementwise.h>
#include <loom/ops/embedding.h>
#include <loom/ops/loss.h>
#include <loom/ops/matmul.h>
#include <loom/ops/norm.h>
#include <loom/ops/reduce.h>
#include <loom/ops/rotary.h>
#include <loom/ops/shape.h>
#include <loom/ops/softmax.h>
