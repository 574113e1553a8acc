"""A loss term of one's own, as experiments/README.md shows it ("A loss term of one's own"), for
tests that name it by import path (``loss._target_=user_losses.WithTV``)."""

from samam.losses import StyleTransferLoss


class WithTV(StyleTransferLoss):
    """The recipe's loss plus tv_weight × the total variation of the stylised images."""

    def __init__(self, tv_weight: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.tv_weight = tv_weight

    def forward(self, ics, icc, iss, content, style):
        terms = super().forward(ics, icc, iss, content, style)
        tv = (ics.diff(dim=-1).abs().mean() + ics.diff(dim=-2).abs().mean()) / 2
        terms["loss_tv"] = tv  # logged as train/loss_tv and val/loss_tv
        terms["loss"] = terms["loss"] + self.tv_weight * tv
        return terms
