"""The residual plan: which stages' shortcuts a run alters, and by how much.

The one owner of the plan mini-language. A plan is written ``"on"`` (nothing altered), ``"off"``
(every residual stage) or ``"off:conv4_x,conv5_x"`` (those stages; paper or code names, any
case), with a shortcut scale ``alpha`` in ``[0, 1]``: 0 removes the shortcut (the studies'
ablation), 1 is the original network. :class:`ResidualPlan` parses, validates, normalises,
labels, serialises and applies it; cells, grid specs, tables, reports and the CLI all go through
it, so a cell's id (a hash of its canonical text) never depends on how the plan was spelled.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from resablate.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

    from resablate.surgery import SurgeryReport

RESIDUAL_ON = "on"
RESIDUAL_OFF = "off"
_STAGE_LIST = ":"
#: The config keys a plan occupies (in a cell's config and a store row).
PLAN_FIELDS = ("residual", "residual_alpha")


@dataclass(frozen=True)
class ResidualPlan:
    """A validated, canonical residual plan (construct with :meth:`parse` or :meth:`off`).

    Attributes:
        stages: Code names of the altered stages, sorted (``layer1``..``layer4``); ``()`` = none
            (the plan is ``"on"``), ``None`` = every residual stage.
        alpha: Shortcut scale in the altered stages; ``1.0`` for ``"on"`` (a plan with alpha 1
            is ``"on"``).
    """

    stages: tuple[str, ...] | None
    alpha: float

    @classmethod
    def parse(cls, text: str, alpha: float = 0.0) -> ResidualPlan:
        """Parse and normalise ``text`` with shortcut scale ``alpha``.

        The full stage set collapses to ``"off"``; ``"on"`` or ``alpha == 1`` gives ``"on"``.

        Raises:
            ConfigError: Malformed plan, a stage without residual blocks, or ``alpha`` outside
                ``[0, 1]`` (the message names the legal values).
        """
        from resablate.families import RESNET_STAGES, canonical_stage

        key = text.strip().lower()
        stages: tuple[str, ...] | None
        if key == RESIDUAL_ON:
            stages = ()
        elif key == RESIDUAL_OFF:
            stages = None
        else:
            prefix, sep, rest = key.partition(_STAGE_LIST)
            if prefix != RESIDUAL_OFF or not sep or not rest.strip():
                raise ConfigError(
                    f"residual plan {text!r} is not valid; use 'on', 'off' or "
                    "'off:STAGE[,STAGE...]' (e.g. 'off:conv4_x,conv5_x')"
                )
            names = sorted({canonical_stage(s) for s in rest.split(",") if s.strip()})
            bad = [s for s in names if s not in RESNET_STAGES]
            if bad:
                raise ConfigError(
                    f"residual plan {text!r}: stage {bad[0]!r} has no residual blocks; "
                    f"legal stages: {', '.join(RESNET_STAGES)} (or conv2_x..conv5_x)"
                )
            stages = None if tuple(names) == RESNET_STAGES else tuple(names)
        value = float(alpha)
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"residual alpha {value} is outside [0, 1]")
        if stages == () or value == 1.0:
            return cls((), 1.0)
        return cls(stages, value)

    @classmethod
    def off(cls, stages: Iterable[str] = (), alpha: float = 0.0) -> ResidualPlan:
        """The plan altering ``stages`` (paper or code names; none given = every stage)."""
        names = [s.strip() for s in stages if s.strip()]
        text = RESIDUAL_OFF + (_STAGE_LIST + ",".join(names) if names else "")
        return cls.parse(text, alpha)

    @property
    def is_on(self) -> bool:
        """Whether the plan leaves every shortcut as it is."""
        return self.stages == ()

    @property
    def every_stage(self) -> bool:
        """Whether the plan alters every residual stage (``"off"``)."""
        return self.stages is None

    @property
    def text(self) -> str:
        """The canonical text: ``"on"``, ``"off"`` or ``"off:layer3,layer4"``."""
        if self.stages is None:
            return RESIDUAL_OFF
        if not self.stages:
            return RESIDUAL_ON
        return f"{RESIDUAL_OFF}{_STAGE_LIST}{','.join(self.stages)}"

    def __str__(self) -> str:
        return self.text

    @property
    def label(self) -> str:
        """Table label: ``"on"``, ``"off"``, ``"off:layer3,layer4"``, or ``"×0.5 layer4"``-style
        for a scaled shortcut."""
        if self.is_on or self.alpha == 0.0:
            return self.text
        stages = "" if self.stages is None else " " + ",".join(self.stages)
        return f"×{self.alpha:g}{stages}"

    @property
    def title(self) -> str:
        """Figure label: ``"residual off"``, ``"residual off:layer4 (α = 0.5)"``."""
        scaled = not self.is_on and self.alpha != 0.0
        return f"residual {self.text}" + (f" (α = {self.alpha:g})" if scaled else "")

    @property
    def suffix(self) -> str:
        """A cell label's part: ``""`` for ``"on"``, else ``"residual off"`` (``" ×0.5"`` added
        for a scaled shortcut)."""
        if self.is_on:
            return ""
        return f"residual {self.text}" + ("" if self.alpha == 0.0 else f" ×{self.alpha:g}")

    def to_dict(self) -> dict[str, Any]:
        """``{"residual": text, "residual_alpha": alpha}``, the keys of a cell's config."""
        return dict(zip(PLAN_FIELDS, (self.text, self.alpha), strict=True))

    def apply(self, model: nn.Module) -> SurgeryReport | None:
        """Rewire ``model`` in place: drop (alpha 0) or scale the plan's shortcuts.

        Returns:
            What surgery changed; ``None`` for ``"on"`` (the model is left untouched).
        """
        from resablate.surgery import drop_residual, scale_residual

        if self.is_on:
            return None
        if self.alpha == 0.0:
            return drop_residual(model, self.stages)
        return scale_residual(model, self.alpha, self.stages)


#: The plan that alters nothing (a cell's default).
PLAN_ON = ResidualPlan((), 1.0)


def split_plans(text: str) -> list[str]:
    """Split a comma-separated list of plans; a stage list (``"off:conv4_x,conv5_x"``) is one."""
    if text.strip().lower().startswith(RESIDUAL_OFF + _STAGE_LIST):
        return [text.strip()]
    return [part.strip() for part in text.split(",") if part.strip()]
