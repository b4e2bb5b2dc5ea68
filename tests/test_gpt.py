"""GPT (nanoGPT-style causal transformer) and generate()."""

import math

import pytest
import torch
import torch.nn.functional as F

from trainforge.recipes.gpt import GPT, generate


def small(**kw):
    torch.manual_seed(0)
    args = dict(vocab_size=11, context=8, n_layer=2, n_head=2, n_embd=16)
    args.update(kw)
    return GPT(**args)


def test_forward_shape_and_context_limit():
    m = small()
    assert m(torch.randint(11, (3, 8))).shape == (3, 8, 11)
    assert m(torch.randint(11, (2, 1))).shape == (2, 1, 11)
    with pytest.raises(ValueError, match="longer than the model's context 8"):
        m(torch.randint(11, (1, 9)))


def test_head_tied_to_token_embedding():
    m = small()
    assert m.lm_head.weight is m.transformer.wte.weight
    sd = m.state_dict()
    assert sd["lm_head.weight"].data_ptr() == sd["transformer.wte.weight"].data_ptr()


def test_num_params_counts_tied_weight_once():
    m = small()
    unique = sum(p.numel() for p in m.parameters())  # parameters() yields the tied tensor once
    assert m.num_params(non_embedding=False) == unique
    assert m.num_params() == unique - 8 * 16  # nanoGPT leaves out the position embedding
    # 2 blocks of (ln, qkv, proj, ln, fc, proj) without bias, plus ln_f, wte (tied), wpe
    per_block = 16 + 16 * 48 + 16 * 16 + 16 + 16 * 64 + 64 * 16
    assert unique == 2 * per_block + 16 + 11 * 16 + 8 * 16


def test_init_like_nanogpt():
    torch.manual_seed(0)
    m = GPT(vocab_size=256, context=64, n_layer=4, n_head=4, n_embd=128)
    proj = torch.cat([b.attn.c_proj.weight.flatten() for b in m.transformer.h])
    fc = torch.cat([b.mlp.c_fc.weight.flatten() for b in m.transformer.h])
    assert abs(proj.std().item() - 0.02 / math.sqrt(2 * 4)) < 1e-3
    assert abs(fc.std().item() - 0.02) < 1e-3
    assert abs(m.transformer.wte.weight.std().item() - 0.02) < 2e-3
    assert all(b.ln_1.bias is None and b.attn.c_attn.bias is None for b in m.transformer.h)  # bias=False
    with_bias = GPT(vocab_size=5, context=4, n_layer=1, n_head=1, n_embd=8, bias=True)
    assert torch.count_nonzero(with_bias.transformer.h[0].mlp.c_fc.bias) == 0


def test_causal_future_tokens_do_not_change_the_past():
    m = small().eval()
    x = torch.randint(11, (2, 8))
    y = x.clone()
    y[:, 5:] = (y[:, 5:] + 1) % 11
    with torch.no_grad():
        a, b = m(x), m(y)
    torch.testing.assert_close(a[:, :5], b[:, :5])
    assert not torch.allclose(a[:, 5:], b[:, 5:])


def test_rejects_bad_heads():
    with pytest.raises(ValueError, match="divisible"):
        GPT(vocab_size=5, context=4, n_layer=1, n_head=3, n_embd=16)


def test_learns_a_cycle():
    """A few dozen AdamW steps learn a deterministic sequence (the model can be trained at all)."""
    m = small(dropout=0.1)
    seq = torch.arange(60) % 11
    batch = torch.stack([seq[i:i + 9] for i in range(0, 40, 3)])
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    for _ in range(60):
        loss = F.cross_entropy(m(batch[:, :-1]).flatten(0, 1), batch[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1
    out = generate(m, torch.tensor([[3]]), 20, greedy=True)
    assert out[0].tolist() == [(3 + i) % 11 for i in range(21)]


class Recorder(torch.nn.Module):
    """Wraps a GPT (as DDP would, on ``.module``) and records the input lengths it is given."""

    def __init__(self, inner):
        super().__init__()
        self.module = inner
        self.lengths = []

    def forward(self, idx):
        self.lengths.append(idx.shape[1])
        return self.module(idx)


def test_generate_windows_the_context_and_restores_mode():
    m = Recorder(small(dropout=0.5))
    m.train()
    out = generate(m, torch.randint(11, (4, 3)), 12, greedy=True)
    assert out.shape == (4, 15)
    assert max(m.lengths) == 8 and m.lengths[:5] == [3, 4, 5, 6, 7]  # never more than the context
    assert m.training  # mode as found
    again = generate(m, out[:, :3], 12, greedy=True)
    assert torch.equal(out, again)  # greedy is deterministic (and dropout was off while generating)


def test_generate_sampling_top_k_and_generator():
    m = small()
    idx = torch.zeros(2, 1, dtype=torch.long)
    a = generate(m, idx, 10, generator=torch.Generator().manual_seed(1))
    b = generate(m, idx, 10, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    greedy = generate(m, idx, 10, greedy=True)
    assert torch.equal(generate(m, idx, 10, top_k=1), greedy)  # top-1 sampling is argmax
    assert generate(m, idx, 5, top_k=100).shape == (2, 6)  # k larger than the vocabulary is fine
    with pytest.raises(ValueError, match="temperature"):
        generate(m, idx, 1, temperature=0.0)
