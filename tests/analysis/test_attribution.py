"""Parameter attribution: the Fisher diagonal against a naive per-sample loop, and the sets and
influences of appendix B on a hand-made round whose answer is worked out by hand."""

import torch

from robustlr.aggregation import ParamLayout
from robustlr.analysis.attribution import fisher_authors, fisher_diagonal, influence, influence_authors


def test_the_fisher_diagonal_equals_a_naive_per_sample_loop():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(2 * 4 * 4, 3))
    layout = ParamLayout.from_module(model)
    flat = layout.flatten(model)
    x, y = torch.randn(7, 1, 6, 6), torch.tensor([0, 1, 2, 0, 1, 2, 0])
    fisher, grad_loss = fisher_diagonal(model, flat, layout, x, y, chunk=3)
    sq, tot = torch.zeros(layout.numel), torch.zeros(layout.numel)
    for i in range(7):
        model.zero_grad()
        torch.log_softmax(model(x[i:i + 1]), dim=1)[0, y[i]].backward()
        g = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        sq += g * g
        tot += g
    assert torch.allclose(fisher, sq / 7, rtol=1e-5, atol=1e-8)
    assert torch.allclose(grad_loss, -tot / 7, rtol=1e-5, atol=1e-8)


def test_the_sets_and_influences_of_a_hand_made_round():
    d = torch.tensor([1.0, -2.0, 0.5, 3.0, -1.0, 0.0])  # the applied step
    f_adv, g_adv = torch.tensor([5.0, 4.0, 0, 0, 0, 0]), torch.tensor([1.0, 1.0, 0, 0, 0, 0])
    f_hon, g_hon = torch.tensor([0, 3.0, 0, 6.0, 0, 0]), torch.tensor([0, -1.0, 0, -1.0, 0, 0])
    flipped = torch.tensor([True, False, False, True, False, False])
    out = influence(d, f_adv, g_adv, f_hon, g_hon, k=2, flipped=flipped)
    # A = {0, 1}: d*g = +1 (coordinate 0 raises the adversarial loss), -2 (coordinate 1 lowers it)
    # H = {3, 1}: d*g = -3 (coordinate 3 lowers the honest loss), +2 (coordinate 1 raises it)
    # S1 = {1}, S3 = {0}, S2 = {3}, S4 = {1}
    assert (out["n_S1"], out["n_S2"], out["n_S3"], out["n_S4"]) == (1, 1, 1, 1)
    # ||S1\S2|| = |d1| = 2, ||S3\S4|| = |d0| = 1, ||S2\S1|| = |d3| = 3, ||S4\S3|| = |d1| = 2
    assert out["I_adv"] == 2.0 and out["I_hon"] == 6.0 and out["net"] == 4.0
    assert out["I_adv_diff"] == 1.0 and out["I_hon_diff"] == 1.0 and out["net_diff"] == 0.0
    assert (out["n_S1_flipped"], out["n_S2_flipped"], out["n_S3_flipped"], out["n_S4_flipped"]) == (0, 1, 1, 0)


def test_a_parameter_in_both_mappings_cancels_out():
    d = torch.tensor([-2.0, 1.0])
    g = torch.tensor([1.0, 0.0])  # coordinate 0 lowers both losses: it is in S1 and in S2
    out = influence(d, torch.tensor([1.0, 0.0]), g, torch.tensor([1.0, 0.0]), g, k=1)
    assert (out["n_S1"], out["n_S2"]) == (1, 1)
    assert out["norm_S1_minus_S2"] == 0.0 and out["norm_S2_minus_S1"] == 0.0
    assert out["I_adv"] == out["I_hon"] == out["net"] == 0.0
    assert "n_S1_flipped" not in out  # no RLR in this round


def test_the_authors_fisher_squares_each_batchs_summed_logit_gradient():
    """comp_diag_fisher of the authors' code, written out: per batch (in order) the gradient of the
    summed logits of the labels, squared, summed over batches, divided by the image count."""
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(2 * 4 * 4, 3))
    layout = ParamLayout.from_module(model)
    flat = layout.flatten(model)
    x, y = torch.randn(7, 1, 6, 6), torch.tensor([0, 1, 2, 0, 1, 2, 0])
    got = fisher_authors(model, flat, layout, x, y, batch=3)
    want = torch.zeros(layout.numel)
    for start in (0, 3, 6):
        model.zero_grad()
        model(x[start:start + 3]).gather(1, y[start:start + 3].view(-1, 1)).sum().backward()
        g = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        want += g * g / 7
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-8)
    # one batch of all seven differs: the batch size is part of the authors' definition
    assert not torch.allclose(fisher_authors(model, flat, layout, x, y, batch=256), got)


def test_the_authors_sets_come_from_the_flip_mask_and_their_curve_from_norm_differences():
    step = torch.tensor([1.0, -2.0, 0.5, 3.0, -1.0, 0.0])
    f_adv = torch.tensor([5.0, 4.0, 3.0, 0.0, 0.0, 0.0])  # top 3: {0, 1, 2}
    f_hon = torch.tensor([0.0, 4.0, 0.0, 5.0, 3.0, 0.0])  # top 3: {1, 3, 4}
    flipped = torch.tensor([False, True, True, False, True, False])
    r = influence_authors(step, f_adv, f_hon, flipped, k=3)
    # max (not flipped): adv {0}, hon {3}; min (flipped): adv {1, 2}, hon {1, 4}
    # S1 = {0}, S2 = {3}, S3 = {2}, S4 = {4}
    assert (r["norm_S1"], r["norm_S2"], r["norm_S3"], r["norm_S4"]) == (1.0, 3.0, 0.5, 1.0)
    assert (r["net_adv"], r["net_hon"], r["net"]) == (0.5, 2.0, 1.5)
    # FedAvg: no flips, every coordinate "maximized": S3 = S4 = {}; S1 = {0, 2}, S2 = {3, 4}
    f = influence_authors(step, f_adv, f_hon, None, k=3)
    assert (f["norm_S3"], f["norm_S4"]) == (0.0, 0.0)
    assert abs(f["net_adv"] - 1.25 ** 0.5) < 1e-6 and abs(f["net_hon"] - 10.0 ** 0.5) < 1e-6
