"""Knowledge distillation: a trained run (the teacher) teaches the model being trained.

The student's loss is `(1 - weight) * hard + weight * T² * KL(teacher_T || student_T)`:
the labels' loss plus the Kullback-Leibler divergence between the teacher's and the
student's outputs softened by the temperature T (Hinton et al., 2015; T² keeps the soft
term's gradients at the scale of the hard one's). The teacher sees the very batch the
student sees (augmented, mixed), brought to its own input size and normalisation, so any
student of the registry learns from any teacher trained on the same classes.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.nn import functional as F

from imgcls.data.preprocess import Preprocess
from imgcls.errors import ConfigError
from imgcls.models.registry import build_model
from imgcls.models.run_dir import is_run_dir, read_run_config

__all__ = ["Teacher", "distillation_loss"]


def distillation_loss(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float
) -> torch.Tensor:
    """T² · KL(softmax(teacher / T) ‖ softmax(student / T)), averaged over the batch."""
    return (
        F.kl_div(
            F.log_softmax(student.float() / temperature, dim=1),
            F.log_softmax(teacher.float() / temperature, dim=1),
            reduction="batchmean",
            log_target=True,
        )
        * temperature**2
    )


class Teacher:
    """A run directory's best network, frozen, answering the student's batches."""

    def __init__(
        self,
        run: str,
        class_names: list[str],
        student: Preprocess,
        device: torch.device,
        temperature: float,
        weight: float,
    ) -> None:
        if not is_run_dir(run):
            raise ConfigError(
                f"`teacher`: {run} is not a run directory (train the teacher with "
                "`imgcls train` first, on the same classes)",
                parameters=("teacher",),
            )
        saved = read_run_config(run)
        if "head" in saved or saved.get("multi_label"):
            raise ConfigError(
                f"`teacher`: {run} is not a single-label network trained end to end "
                "(a classical head or a multi-label run cannot teach)",
                parameters=("teacher",),
            )
        if saved["class_names"] != class_names:
            raise ConfigError(
                f"`teacher`: {run} was trained on other classes than the data's "
                f"({', '.join(saved['class_names'][:5])}... against "
                f"{', '.join(class_names[:5])}...)",
                parameters=("teacher",),
            )
        self.network, self.preprocess = build_model(run, weights=Path(run) / "best.safetensors")
        self.network.to(device).eval().requires_grad_(False)
        self.temperature, self.weight = temperature, weight
        # From the student's normalised input to the teacher's: undo, resize, redo.
        self._student = _mean_std(student, device)
        self._teacher = _mean_std(self.preprocess, device)
        self._size = tuple(self.preprocess.input_size[1:])
        self._same_input = (student.mean, student.std, tuple(student.input_size)) == (
            self.preprocess.mean, self.preprocess.std, tuple(self.preprocess.input_size)
        )  # fmt: skip

    @torch.no_grad()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """The teacher's logits for a batch prepared for the student."""
        if not self._same_input:
            mean, std = self._student
            images = images * std + mean
            if images.shape[-2:] != self._size:
                images = F.interpolate(images, size=self._size, mode="bilinear", antialias=True)
            mean, std = self._teacher
            images = (images - mean) / std
        return self.network(images)

    def loss(self, hard: torch.Tensor, student: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """The student's loss on a batch: its hard loss blended with the soft one."""
        soft = distillation_loss(student, self.logits(images), self.temperature)
        return (1 - self.weight) * hard + self.weight * soft


def _mean_std(preprocess: Preprocess, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A preprocessing's normalisation as tensors that broadcast over an NCHW batch."""
    mean, std = (
        torch.tensor(v, device=device).view(1, 3, 1, 1) for v in (preprocess.mean, preprocess.std)
    )
    return mean, std
