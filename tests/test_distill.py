"""Knowledge-distillation loss."""
import pytest
import torch
import torch.nn.functional as F

from dstrain.distill import distillation_loss, kd_term


def _logits(seed, shape=(6, 3)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g)


def test_alpha_zero_is_exactly_the_hard_loss():
    s, t = _logits(0), _logits(1)
    hard = F.cross_entropy(s, torch.tensor([0, 1, 2, 0, 1, 2]))
    out = distillation_loss(s, t, hard, alpha_kd=0.0, temperature=3.0)
    assert torch.equal(out, hard)
    # and it really ignores the teacher: a different teacher changes nothing
    assert torch.equal(distillation_loss(s, t * 10, hard, 0.0, 3.0), hard)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_kd_term_matches_formula(temperature):
    s, t = _logits(2), _logits(3)
    p_t = F.softmax(t / temperature, -1)
    expected = temperature**2 * (p_t * (p_t.log() - F.log_softmax(s / temperature, -1))).sum(-1).mean()
    torch.testing.assert_close(kd_term(s, t, temperature), expected)
    hard = torch.tensor(0.7)
    torch.testing.assert_close(
        distillation_loss(s, t, hard, alpha_kd=0.25, temperature=temperature), 0.75 * hard + 0.25 * expected
    )


def test_kd_gradient_zero_when_student_equals_teacher():
    t = _logits(4)
    s = t.clone().requires_grad_(True)
    loss = kd_term(s, t, temperature=2.0)
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    assert s.grad.abs().max().item() < 1e-7
    # control: a different student gets a real gradient, and only the student gets one
    s2 = _logits(5).requires_grad_(True)
    t2 = t.clone().requires_grad_(True)
    kd_term(s2, t2, temperature=2.0).backward()
    assert s2.grad.abs().max().item() > 1e-3
    assert t2.grad is None


def test_regression_uses_mse_between_student_and_teacher():
    s, t = _logits(6, (5,)), _logits(7, (5,))
    torch.testing.assert_close(kd_term(s, t, temperature=3.0, regression=True), F.mse_loss(s, t))
    s1, t1 = s.unsqueeze(-1), t.unsqueeze(-1)  # [N, 1] head: inferred as regression
    torch.testing.assert_close(kd_term(s1, t1), F.mse_loss(s, t))
    hard = torch.tensor(1.5)
    torch.testing.assert_close(distillation_loss(s1, t1, hard, 0.5, 2.0), 0.5 * hard + 0.5 * F.mse_loss(s, t))


def test_bad_arguments():
    s, t = _logits(0), _logits(1)
    with pytest.raises(ValueError, match="differ in shape"):
        kd_term(s, t[:, :2])
    with pytest.raises(ValueError, match="temperature"):
        kd_term(s, t, temperature=0.0)
    with pytest.raises(ValueError, match="alpha_kd"):
        distillation_loss(s, t, torch.tensor(1.0), alpha_kd=1.5)
    with pytest.raises(ValueError, match="no teacher"):
        distillation_loss(s, None, torch.tensor(1.0), alpha_kd=0.5)


def test_token_wise_kd_is_the_mean_kl_over_every_position():
    """Language-model logits [batch, positions, vocab]: every position is one example of the batchmean KL."""
    s, t = _logits(6, (2, 5, 7)), _logits(7, (2, 5, 7))
    p_t = F.softmax(t / 2.0, -1)
    per_token = (p_t * (p_t.log() - F.log_softmax(s / 2.0, -1))).sum(-1)
    torch.testing.assert_close(kd_term(s, t, 2.0), 4.0 * per_token.mean())


def test_squarehead_is_the_sum_over_layers_of_mse_normalised_by_the_teacher():
    from dstrain.distill import squarehead_loss

    g = torch.Generator().manual_seed(8)
    teacher = [torch.randn(2, 5, 4, generator=g, dtype=torch.float64) * scale for scale in (0.1, 1.0, 50.0)]
    student = [t + 0.3 * torch.randn(t.shape, generator=g, dtype=torch.float64) * t.std() for t in teacher]
    expected = 0.0
    for s, t in zip(student, teacher):  # written out: sum over elements of (s - t)^2 over sum of t^2
        expected += float(((s - t) ** 2).sum() / (t ** 2).sum())
    got = squarehead_loss([s.float() for s in student], [t.float() for t in teacher])
    assert got.dtype == torch.float32
    assert abs(float(got) - expected) < 1e-5 * expected
    # scale-free per layer: scaling one layer's student and teacher together changes nothing
    scaled = squarehead_loss([student[0] * 1e3, *student[1:]], [teacher[0] * 1e3, *teacher[1:]])
    assert abs(float(scaled) - float(got)) < 1e-5 * float(got)
    # the teacher is detached, the student gets the gradient 2 (s - t) / sum(t^2) per layer
    s0 = student[0].clone().requires_grad_(True)
    squarehead_loss([s0], [teacher[0].clone().requires_grad_(True)]).backward()
    torch.testing.assert_close(s0.grad, 2 * (student[0] - teacher[0]) / (teacher[0] ** 2).sum())
    assert float(squarehead_loss(teacher, teacher)) == 0.0
    with pytest.raises(ValueError, match="layers"):
        squarehead_loss(student[:2], teacher)
