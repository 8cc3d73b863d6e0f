// The one header a user includes: #include <loom/loom.h>
#pragma once

#include <loom/core/autograd.h>
#include <loom/core/dtype.h>
#include <loom/core/error.h>
#include <loom/core/generator.h>
#include <loom/core/gradcheck.h>
#include <loom/core/npy.h>
#include <loom/core/png.h>
#include <loom/core/safetensors.h>
#include <loom/core/tensor.h>
#include <loom/ops/ops.h>
#include <loom/nn/embedding.h>
#include <loom/nn/module.h>
#include <loom/nn/positional.h>
#include <loom/nn/layers.h>
#include <loom/nn/attention.h>
#include <loom/nn/transformer.h>
#include <loom/models/transformer_wrapper.h>
#include <loom/models/config.h>
#include <loom/models/autoregressive.h>
#include <loom/models/continuous.h>
#include <loom/models/vit.h>
#include <loom/models/xtransformer.h>
#include <loom/train/optim.h>
#include <loom/train/data.h>
#include <loom/train/trainer.h>
