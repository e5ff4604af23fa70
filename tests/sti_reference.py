"""Float64 loop implementation of SPEC section 4, written independently of the package code."""

import math

import torch


def l2n(x):
    return x / x.norm(dim=-1, keepdim=True)


def sti_loops(frames, patches, words, word_mask, class_emb, Wp, bp, Ww, bw, tau, normalize=True,
              spatial=True, temporal=True):
    """Returns (s_sp [B,C,T], s_temp [B,C,T], f_st [B,C,D], cos [B,C]) in float64, by plain loops.

    The ablations of SPEC section 4: ``spatial=False`` puts S_sp = 1 in G; ``temporal=False``
    weights the frames by S_sp (s_temp is then those weights); with both off the weights are 1/T.
    """
    frames, patches, words, class_emb = (t.double() for t in (frames, patches, words, class_emb))
    Wp, bp, Ww, bw = (t.double() for t in (Wp, bp, Ww, bw))
    if normalize:
        frames, patches, words, class_emb = l2n(frames), l2n(patches), l2n(words), l2n(class_emb)
    B, T, Np, D = patches.shape
    C, Nw, _ = words.shape
    P = torch.relu(patches @ Wp.t() + bp)
    A = torch.relu(words @ Ww.t() + bw)
    s_sp = torch.empty(B, C, T, dtype=torch.float64)
    s_temp = torch.empty(B, C, T, dtype=torch.float64)
    f_st = torch.zeros(B, C, D, dtype=torch.float64)
    cos = torch.empty(B, C, dtype=torch.float64)
    for b in range(B):
        for c in range(C):
            valid = [l for l in range(Nw) if bool(word_mask[c, l])]
            for t in range(T):
                best = -math.inf
                for l in valid:
                    for k in range(Np):
                        best = max(best, float(P[b, t, k] @ A[c, l]))
                s_sp[b, c, t] = best if spatial else 1.0
            acc = [0.0] * T
            if not temporal:
                valid = []  # no softmax over words: the weights are S_sp (or 1/T)
                acc = [float(s_sp[b, c, t]) if spatial else 1.0 / T for t in range(T)]
            for l in valid:
                g = [float(s_sp[b, c, t] * (frames[b, t] @ A[c, l]) / tau) for t in range(T)]
                m = max(g)
                e = [math.exp(x - m) for x in g]
                z = sum(e)
                for t in range(T):
                    acc[t] += e[t] / z
            for t in range(T):
                s_temp[b, c, t] = acc[t] / len(valid) if valid else acc[t]
                f_st[b, c] += s_temp[b, c, t] * frames[b, t]
            cos[b, c] = (f_st[b, c] @ class_emb[c]) / (f_st[b, c].norm() * class_emb[c].norm())
    return s_sp, s_temp, f_st, cos
