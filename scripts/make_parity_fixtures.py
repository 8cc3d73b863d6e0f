#!/usr/bin/python3
"""Parity fixtures: small models in plain PyTorch, following x-transformers' semantics
(../shared/reference/x-transformers.md), saved so loom's tests can compare against them.

    /usr/bin/python3 scripts/make_parity_fixtures.py tests/fixtures/parity

Needs Debian's python3-torch and python3-numpy (not installed by scripts/install-deps.sh;
this script runs outside CI). Each fixture directory holds
    config.json           the model, in x-transformers' keyword names (loom's JSON config)
    weights.safetensors   parameters and persistent buffers under x-transformers' names
    input.npy             int64 tokens (b, n), plus mask.npy / context.npy / context_mask.npy / pos.npy
    output.npy            logits in eval mode
    loss_weights.npy, grads.safetensors   (some fixtures) d sum(logits * loss_weights) / d parameter
The reference code below is written from x-transformers' definitions, not imported from it.
"""
import json
import math
import os
import struct
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

MAXNEG = -torch.finfo(torch.float32).max


# ---- layers ------------------------------------------------------------------------------

class LayerNorm(nn.Module):
    def __init__(self, dim, unit_offset=True):
        super().__init__()
        self.unit_offset = unit_offset
        self.gamma = nn.Parameter(torch.zeros(dim) if unit_offset else torch.ones(dim))

    def forward(self, x):
        return F.layer_norm(x, x.shape[-1:]) * (self.gamma + float(self.unit_offset))


class FeedForward(nn.Module):
    def __init__(self, dim, mult=2):
        super().__init__()
        inner = dim * mult
        self.ff = nn.Sequential(nn.Sequential(nn.Linear(dim, inner), nn.GELU()), nn.Dropout(0.0), nn.Linear(inner, dim))

    def forward(self, x):
        return self.ff(x)


def t5_bucket(rel, causal, num_buckets=32, max_distance=128):
    ret = 0
    n = -rel
    if not causal:
        num_buckets //= 2
        ret += (n < 0).long() * num_buckets
        n = torch.abs(n)
    else:
        n = torch.max(n, torch.zeros_like(n))
    max_exact = num_buckets // 2
    is_small = n < max_exact
    val_if_large = max_exact + (torch.log(n.float() / max_exact) / math.log(max_distance / max_exact)
                                * (num_buckets - max_exact)).long()
    val_if_large = torch.min(val_if_large, torch.full_like(val_if_large, num_buckets - 1))
    return ret + torch.where(is_small, n, val_if_large)


class RelativePositionBias(nn.Module):
    def __init__(self, scale, causal, heads, num_buckets=32, max_distance=128):
        super().__init__()
        self.scale, self.causal, self.num_buckets, self.max_distance = scale, causal, num_buckets, max_distance
        self.relative_attention_bias = nn.Embedding(num_buckets, heads)

    def forward(self, q_pos, k_pos):
        rel = k_pos[None, :] - q_pos[:, None]
        bucket = t5_bucket(rel, self.causal, self.num_buckets, self.max_distance)
        return self.relative_attention_bias(bucket).permute(2, 0, 1) * self.scale


def alibi_slopes(heads):
    def pow2(n):
        start = 2 ** (-2 ** -(math.log2(n) - 3))
        return [start * start ** i for i in range(n)]
    if math.log2(heads).is_integer():
        return pow2(heads)
    p = 2 ** math.floor(math.log2(heads))
    return pow2(p) + pow2(2 * p)[0::2][:heads - p]


def rotary_freqs(dim, t):
    inv_freq = 1. / (10000 ** (torch.arange(0, dim, 2).float() / dim))
    freqs = t.float()[..., None] * inv_freq
    return torch.stack((freqs, freqs), dim=-1).flatten(-2), inv_freq


def rotate_half(x):
    x = x.unflatten(-1, (-1, 2))
    x1, x2 = x.unbind(-1)
    return torch.stack((-x2, x1), dim=-1).flatten(-2)


def apply_rotary(t, freqs):
    r = freqs.shape[-1]
    t, rest = t[..., :r], t[..., r:]
    return torch.cat((t * freqs.cos() + rotate_half(t) * freqs.sin(), rest), dim=-1)


class Attention(nn.Module):
    def __init__(self, dim, heads, dim_head, causal=False, dim_context=None, selective=False):
        super().__init__()
        dim_context = dim_context or dim
        self.heads, self.dim_head, self.causal, self.selective = heads, dim_head, causal, selective
        self.to_q = nn.Linear(dim, heads * dim_head, bias=False)
        self.to_k = nn.Linear(dim_context, heads * dim_head, bias=False)
        self.to_v = nn.Linear(dim_context, heads * dim_head, bias=False)
        self.to_out = nn.Linear(heads * dim_head, dim, bias=False)

    def forward(self, x, context=None, mask=None, context_mask=None, bias=None, freqs=None, prev_attn=None):
        kv = x if context is None else context
        b, n, _ = x.shape
        split = lambda t: t.unflatten(-1, (self.heads, -1)).transpose(1, 2)
        q, k, v = split(self.to_q(x)), split(self.to_k(kv)), split(self.to_v(kv))
        if freqs is not None:
            q, k = apply_rotary(q, freqs), apply_rotary(k, freqs)
        sim = q @ k.transpose(-1, -2) * self.dim_head ** -0.5
        if prev_attn is not None:  # residual attention (RealFormer)
            sim = sim + prev_attn
        if bias is not None:
            sim = sim + bias
        i, j = sim.shape[-2:]
        key_mask = context_mask if context is not None else mask
        final = torch.ones(b, 1, i, j, dtype=torch.bool)
        if key_mask is not None:
            final = final & key_mask[:, None, None, :]
        sim = sim.masked_fill(~final, MAXNEG)
        if self.causal:
            sim = sim.masked_fill(torch.ones(i, j, dtype=torch.bool).triu(j - i + 1), MAXNEG)
        if self.selective:  # Leviathan et al., as x-transformers' Attend does it
            gate = sim[:, 0].relu()
            keep = torch.ones(j)
            keep[j - i] = 0.  # the first own key is never masked
            gate = gate * keep
            eye = torch.cat((torch.ones(i, j - i), torch.eye(i)), dim=-1)
            gate = gate * (1. - eye)
            gate = F.pad(gate, (0, 0, 1, -1), value=0.)
            sim = sim - gate.cumsum(dim=-2)[:, None]
        self.pre_softmax_attn = sim
        attn = sim.softmax(dim=-1)
        out = attn @ v
        row_empty = ~final.any(dim=-1, keepdim=True)
        out = out.masked_fill(row_empty, 0.)
        out = self.to_out(out.transpose(1, 2).flatten(-2))
        if mask is not None:
            out = out * mask[..., None]
        return out


class AttentionLayers(nn.Module):
    def __init__(self, dim, depth, heads, dim_head, causal, cross_attend=False, rel_pos_bias=False,
                 cross_rel_pos_bias=False, alibi_pos_bias=False, rotary_pos_emb=False, selective=False,
                 cross_attn_dim_context=None, residual_attn=False):
        super().__init__()
        self.causal, self.heads, self.residual_attn = causal, heads, residual_attn
        types = (['a', 'c', 'f'] if cross_attend else ['a', 'f']) * depth
        self.layer_types = types
        self.layers = nn.ModuleList()
        for t in types:
            if t == 'a':
                block = Attention(dim, heads, dim_head, causal=causal, selective=selective)
            elif t == 'c':
                block = Attention(dim, heads, dim_head, dim_context=cross_attn_dim_context)
            else:
                block = FeedForward(dim)
            self.layers.append(nn.ModuleList([nn.ModuleList([LayerNorm(dim), None, None]), block, None]))
        self.final_norm = LayerNorm(dim)
        self.rel_pos = RelativePositionBias(dim_head ** 0.5, causal, heads) if rel_pos_bias else None
        self.cross_rel_pos = RelativePositionBias(dim_head ** 0.5, False, heads) if cross_rel_pos_bias else None
        self.alibi = alibi_pos_bias
        self.rotary_dim = dim_head // 2 if rotary_pos_emb else None
        if rotary_pos_emb:
            self.rotary_pos_emb = nn.Module()
            self.rotary_pos_emb.register_buffer('inv_freq', rotary_freqs(self.rotary_dim, torch.arange(1))[1])

    def forward(self, x, mask=None, context=None, context_mask=None, pos=None):
        n = x.shape[1]
        bias = freqs = cross_bias = None
        if self.rel_pos is not None:
            bias = self.rel_pos(torch.arange(n), torch.arange(n))
        if self.alibi:
            p = pos if pos is not None else torch.arange(n).float()
            dist = -(p[..., None, :] - p[..., :, None]).abs()
            if dist.ndim == 3:
                dist = dist[:, None]
            bias = dist * torch.tensor(alibi_slopes(self.heads))[:, None, None]
        if self.rotary_dim:
            freqs, _ = rotary_freqs(self.rotary_dim, torch.arange(n))
        if self.cross_rel_pos is not None:
            cross_bias = self.cross_rel_pos(torch.arange(n), torch.arange(context.shape[1]))
        prev = None
        for t, (norms, block, _) in zip(self.layer_types, self.layers):
            h = norms[0](x)
            if t == 'a':
                out = block(h, mask=mask, bias=bias, freqs=freqs, prev_attn=prev)
                if self.residual_attn:
                    prev = block.pre_softmax_attn
            elif t == 'c':
                out = block(h, context=context, mask=mask, context_mask=context_mask, bias=cross_bias)
            else:
                out = block(h)
            x = x + out
        return self.final_norm(x)


class TransformerWrapper(nn.Module):
    def __init__(self, num_tokens, max_seq_len, attn_layers, dim, use_abs_pos_emb):
        super().__init__()
        self.token_emb = nn.Module()
        self.token_emb.emb = nn.Embedding(num_tokens, dim)
        self.pos_emb = None
        if use_abs_pos_emb:
            self.pos_emb = nn.Module()
            self.pos_emb.emb = nn.Embedding(max_seq_len, dim)
        self.attn_layers = attn_layers
        self.to_logits = nn.Linear(dim, num_tokens, bias=False)
        self.dim = dim

    def forward(self, tokens, **kwargs):
        x = self.token_emb.emb(tokens)
        if self.pos_emb is not None:
            x = x + self.pos_emb.emb(torch.arange(tokens.shape[1])) * self.dim ** -0.5
        return self.to_logits(self.attn_layers(x, **kwargs))


class ViTransformerWrapper(nn.Module):
    def __init__(self, image_size, patch_size, channels, num_classes, attn_layers, dim):
        super().__init__()
        patches, patch_dim = (image_size // patch_size) ** 2, channels * patch_size ** 2
        self.patch_size = patch_size
        self.pos_embedding = nn.Parameter(torch.randn(1, patches, dim))
        self.patch_to_embedding = nn.Sequential(LayerNorm(patch_dim, unit_offset=False), nn.Linear(patch_dim, dim),
                                                LayerNorm(dim, unit_offset=False))
        self.attn_layers = attn_layers
        self.mlp_head = nn.Linear(dim, num_classes)

    def forward(self, img):
        b, c, h, w = img.shape
        p = self.patch_size
        # 'b c (h p1) (w p2) -> b (h w) (p1 p2 c)'
        x = img.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)
        x = self.patch_to_embedding(x) + self.pos_embedding
        return self.mlp_head(self.attn_layers(x).mean(dim=-2))


# ---- files -------------------------------------------------------------------------------

def save_safetensors(path, tensors):
    header, blobs, offset = {}, [], 0
    for name, t in tensors.items():
        data = t.detach().contiguous().numpy().astype('<f4').tobytes()
        header[name] = {'dtype': 'F32', 'shape': list(t.shape), 'data_offsets': [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(',', ':')).encode()
    text += b' ' * ((8 - len(text) % 8) % 8)
    with open(path, 'wb') as f:
        f.write(struct.pack('<Q', len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


def state_dict(model):
    return {k: v for k, v in model.state_dict().items()}


def randomize(model, gen):
    """Non-trivial values everywhere (norm gains away from 1, biases away from 0)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (0.3 if p.ndim > 1 else 0.2))


def write_fixture(root, name, config, model, inputs, grads=False):
    d = os.path.join(root, name)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, 'config.json'), 'w') as f:
        json.dump(config, f, indent=2)
    save_safetensors(os.path.join(d, 'weights.safetensors'), state_dict(model))
    kwargs = {}  # (weights are saved in float32 before the reference runs in float64)
    for key, value in inputs.items():
        np.save(os.path.join(d, key + '.npy'), value.numpy())
        if key != 'input':
            kwargs[key] = value
    # The reference is computed in float64, so the fixtures hold the exact
    # answer to float32 precision (loom computes in float32).
    model.eval()
    model.double()
    kwargs = {k: v.double() if v.is_floating_point() else v for k, v in kwargs.items()}
    x = inputs['input']
    logits = model(x.double() if x.is_floating_point() else x, **kwargs)
    np.save(os.path.join(d, 'output.npy'), logits.detach().numpy().astype(np.float32))
    if grads:
        gen = torch.Generator().manual_seed(99)
        weights = torch.randn(logits.shape, generator=gen).double()
        model.zero_grad()
        (logits * weights).sum().backward()
        np.save(os.path.join(d, 'loss_weights.npy'), weights.numpy().astype(np.float32))
        save_safetensors(os.path.join(d, 'grads.safetensors'),
                         {n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    print('wrote', d)


def main(root):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    V, N, B = 23, 9, 2
    tokens = torch.randint(0, V, (B, N), generator=gen)
    mask = torch.ones(B, N, dtype=torch.bool)
    mask[1, 6:] = False

    def wrapper_config(layers, use_abs_pos_emb):
        return {'wrapper': 'TransformerWrapper', 'num_tokens': V, 'max_seq_len': 16,
                'use_abs_pos_emb': use_abs_pos_emb, 'attn_layers': layers}

    # 1. Decoder with rotary (dim_head 8 -> rotary dim 4).
    layers = AttentionLayers(16, 2, 2, 8, causal=True, rotary_pos_emb=True)
    model = TransformerWrapper(V, 16, layers, 16, use_abs_pos_emb=False)
    randomize(model, gen)
    write_fixture(root, 'decoder_rotary',
                  wrapper_config({'type': 'Decoder', 'dim': 16, 'depth': 2, 'heads': 2, 'attn_dim_head': 8,
                                  'ff_mult': 2, 'rotary_pos_emb': True}, False),
                  model, {'input': tokens}, grads=True)

    # 2. Encoder with ALiBi at explicit, irregular, per-sample float positions, and a padding mask.
    layers = AttentionLayers(16, 2, 4, 4, causal=False, alibi_pos_bias=True)
    model = TransformerWrapper(V, 16, layers, 16, use_abs_pos_emb=False)
    randomize(model, gen)
    pos = torch.cumsum(torch.rand(B, N, generator=gen) * 3, dim=1)
    write_fixture(root, 'encoder_alibi_positions',
                  wrapper_config({'type': 'Encoder', 'dim': 16, 'depth': 2, 'heads': 4, 'attn_dim_head': 4,
                                  'ff_mult': 2, 'alibi_pos_bias': True}, False),
                  model, {'input': tokens, 'mask': mask, 'pos': pos})

    # 3. Decoder with a causal T5 bias for self-attention and a separate bidirectional one for
    #    cross-attention to an equally long context (loom's extension; positions 0..n-1 each).
    layers = AttentionLayers(16, 1, 2, 8, causal=True, cross_attend=True, rel_pos_bias=True, cross_rel_pos_bias=True)
    model = TransformerWrapper(V, 16, layers, 16, use_abs_pos_emb=False)
    randomize(model, gen)
    context = torch.randn(B, N, 16, generator=gen)
    write_fixture(root, 'decoder_rel_pos_cross',
                  wrapper_config({'type': 'Decoder', 'dim': 16, 'depth': 1, 'heads': 2, 'attn_dim_head': 8,
                                  'ff_mult': 2, 'cross_attend': True, 'rel_pos_bias': True,
                                  'cross_rel_pos_bias': True}, False),
                  model, {'input': tokens, 'context': context}, grads=True)

    # 4. Encoder cross-attending to a context of another width (24 vs 16) with a context mask,
    #    absolute positions on.
    layers = AttentionLayers(16, 1, 2, 8, causal=False, cross_attend=True, cross_attn_dim_context=24)
    model = TransformerWrapper(V, 16, layers, 16, use_abs_pos_emb=True)
    randomize(model, gen)
    context = torch.randn(B, 11, 24, generator=gen)
    context_mask = torch.ones(B, 11, dtype=torch.bool)
    context_mask[0, 7:] = False
    write_fixture(root, 'encoder_cross_dim_context',
                  wrapper_config({'type': 'Encoder', 'dim': 16, 'depth': 1, 'heads': 2, 'attn_dim_head': 8,
                                  'ff_mult': 2, 'cross_attend': True, 'cross_attn_dim_context': 24}, True),
                  model, {'input': tokens, 'mask': mask, 'context': context, 'context_mask': context_mask})

    # 5. Decoder with selective attention.
    layers = AttentionLayers(16, 2, 2, 8, causal=True, selective=True)
    model = TransformerWrapper(V, 16, layers, 16, use_abs_pos_emb=True)
    randomize(model, gen)
    write_fixture(root, 'decoder_selective',
                  wrapper_config({'type': 'Decoder', 'dim': 16, 'depth': 2, 'heads': 2, 'attn_dim_head': 8,
                                  'ff_mult': 2, 'attn_selective': True}, True),
                  model, {'input': tokens}, grads=True)


    # 6. A ViT: 8x8 single-channel images in 4x4 patches, 10 classes.
    layers = AttentionLayers(16, 2, 2, 8, causal=False)
    model = ViTransformerWrapper(8, 4, 1, 10, layers, 16)
    randomize(model, gen)
    images = torch.rand(3, 1, 8, 8, generator=gen)
    write_fixture(root, 'vit',
                  {'wrapper': 'ViTransformerWrapper', 'image_size': 8, 'patch_size': 4, 'channels': 1,
                   'num_classes': 10,
                   'attn_layers': {'type': 'Encoder', 'dim': 16, 'depth': 2, 'heads': 2, 'attn_dim_head': 8,
                                   'ff_mult': 2}},
                  model, {'input': images}, grads=True)

    # 7. A decoder with residual attention (RealFormer) and a T5 bias, with a padding mask.
    layers = AttentionLayers(16, 3, 2, 8, causal=True, rel_pos_bias=True, residual_attn=True)
    model = TransformerWrapper(V, 16, layers, 16, use_abs_pos_emb=False)
    randomize(model, gen)
    write_fixture(root, 'decoder_residual_attn',
                  wrapper_config({'type': 'Decoder', 'dim': 16, 'depth': 3, 'heads': 2, 'attn_dim_head': 8,
                                  'ff_mult': 2, 'rel_pos_bias': True, 'residual_attn': True}, False),
                  model, {'input': tokens, 'mask': mask}, grads=True)

if __name__ == '__main__':
    main(sys.argv[1] if len(sys.argv) > 1 else 'tests/fixtures/parity')
