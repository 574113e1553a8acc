import torch

from samam.module import inverse_decay


def test_inverse_decay_per_iteration():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p], lr=1e-4)
    sched = inverse_decay(opt, decay=2e-5)
    for it in range(5):
        assert abs(opt.param_groups[0]["lr"] - 1e-4 / (1 + 2e-5 * it)) < 1e-15
        opt.step()
        sched.step()
    state = sched.state_dict()
    opt2 = torch.optim.Adam([p], lr=1e-4)
    sched2 = inverse_decay(opt2, decay=2e-5)
    sched2.load_state_dict(state)
    sched2.step()
    assert abs(opt2.param_groups[0]["lr"] - 1e-4 / (1 + 2e-5 * 6)) < 1e-15
