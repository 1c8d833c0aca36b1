"""Knowledge distillation: the compressed student learns from the teacher's softened outputs.

loss = alpha * KL(softmax(t/T) || softmax(s/T)) * T^2 + (1 - alpha) * CE(s, y)
       + hint_weight * sum(MSE(projection(student feature), teacher feature))   (optional hints)

Outputs that are not class logits (embeddings, boxes, any nesting of tensors) are matched by the MSE
to the teacher's instead of the KL term, and the label term is the recipe's `loss` when the targets
are not classes. Without labels the student learns from the teacher alone.

A model with several outputs (a detector's boxes, scores, landmarks) gets one teacher term per output
(`OutputTerms`): one MSE over all of them joined let the box and landmark regressions swamp the face
scores, whose detection collapsed while the joined cosine rose. Each output's term is weighted
(`outputs`) and, by default, divided by its teacher's variance across inputs (`scale`); an output whose
term still takes most of the teacher loss is named in a finding.

The teacher is the model as it was before any stage ran (default) or any model source. Hint
layers of a pruned student are narrower than the teacher's, so each hint gets a learned 1x1
projection (trained with the student, then discarded). `compare_finetune` also trains a copy
with plain cross-entropy and the same settings, so the report can say whether distillation paid off.
"""

from __future__ import annotations

import copy
from contextlib import ExitStack
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from modelshrink.errors import UserError
from modelshrink.hooks import forward_hooks
from modelshrink.inputs import Inputs, call, output_matrix, output_names, output_widths
from modelshrink.metrics.accuracy import classifies, evaluate_classifier, label_kind
from modelshrink.recipe.stage_specs import DistillSpec
from modelshrink.registry import register
from modelshrink.stages.base import Stage, StageContext
from modelshrink.stages.notes import Comparison
from modelshrink.train import LossFn, task_loss


@register(DistillSpec)
class DistillStage(Stage[DistillSpec]):
    def apply(self, model: nn.Module, ctx: StageContext) -> nn.Module:
        teacher = self._teacher(ctx)
        example = ctx.data.example_inputs(2)
        with torch.inference_mode():
            t_raw = call(teacher, example)
            t_out, s_out = output_matrix(t_raw), output_matrix(call(model.eval(), example))
        if t_out.shape != s_out.shape:
            raise UserError(f"teacher outputs {tuple(t_out.shape)} but the student {tuple(s_out.shape)}")
        labels = label_kind(ctx.data.labeled, ctx.data.class_targets)
        classes = classifies(ctx.evaluate.task, teacher, t_raw, labels)
        plain = copy.deepcopy(model) if self.spec.compare_finetune else None
        hints = Hints(self.spec, teacher, model, example)
        terms = OutputTerms(self.spec, teacher, t_raw, list(ctx.calibration_inputs(SCALE_BATCHES)))
        try:
            ctx.train(
                model,
                self.spec,
                self.name,
                loss_fn=self._loss(teacher, hints, classes and not terms.several, terms, ctx),
                extra_params=list(hints.projections.parameters()),
            )
        finally:
            hints.remove()
        ctx.notes_for(self.name).findings += terms.findings()
        if plain is not None:
            ctx.train(
                plain, self.spec, self.name, label=f"{self.name} (plain fine-tune, for comparison)", resumable=False
            )
            distilled = evaluate_classifier(model, ctx.data.val, ctx.evaluate.max_val_batches)["accuracy"]
            finetuned = evaluate_classifier(plain, ctx.data.val, ctx.evaluate.max_val_batches)["accuracy"]
            ctx.notes_for(self.name).comparison = Comparison(distilled, finetuned)
        return model

    def _teacher(self, ctx: StageContext) -> nn.Module:
        if self.spec.teacher is None:
            teacher = ctx.original_model
        else:
            teacher, _ = ctx.load_model(self.spec.teacher)
        for param in teacher.parameters():
            param.requires_grad_(False)
        return teacher.eval()

    def _loss(self, teacher: nn.Module, hints: Hints, classes: bool, terms: OutputTerms, ctx: StageContext) -> LossFn:
        """The teacher term (KL on class logits, MSE on any other output), the label term where there
        are labels (cross-entropy on classes, else the recipe's `loss`), and the hints."""
        temperature, alpha = self.spec.temperature, self.spec.alpha
        data = ctx.data
        labels = data.labeled and (data.class_targets or self.spec.loss is not None)
        hard_loss = task_loss(self.spec, data) if labels else None

        def loss(student: nn.Module, inputs: Inputs, targets: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                teacher_out = output_matrix(call(teacher, inputs))
            student_raw = call(student, inputs)
            student_out = output_matrix(student_raw)
            if classes:
                soft = (
                    F.kl_div(
                        F.log_softmax(student_out / temperature, dim=1),
                        F.softmax(teacher_out / temperature, dim=1),
                        reduction="batchmean",
                    )
                    * temperature**2
                )
            elif terms.several:
                soft = terms.loss(student_out, teacher_out, temperature)
            else:
                soft = F.mse_loss(student_out, teacher_out)
            total = soft if hard_loss is None else alpha * soft + (1 - alpha) * hard_loss(student_raw, targets)
            return total + self.spec.hint_weight * hints.loss()

        return loss


SCALE_BATCHES = 2  # calibration batches (training data, not noise) the teacher's output scales are measured on
DOMINANT = 0.9  # an output whose term is this share of the teacher loss leaves the others untrained


class OutputTerms:
    """The teacher term of a model with several outputs: a weighted sum of one loss per output, each
    mse / smooth_l1 divided by the teacher's variance of that output (`scale`) unless the recipe says
    otherwise; how much each contributed is summed over training for `findings`."""

    def __init__(self, spec: DistillSpec, teacher: nn.Module, example_outputs: Any, scale_inputs: list[Inputs]):
        self.names, self.widths = output_names(example_outputs), output_widths(example_outputs)
        self.several = len(self.names) > 1
        unknown = sorted(set(spec.outputs) - set(self.names))
        if unknown:
            have = f"its outputs: {', '.join(self.names)}" if self.several else "it has one output"
            raise UserError(f"distill outputs: the model has no output named {', '.join(unknown)} ({have})")
        if spec.outputs and not self.several:
            raise UserError(
                "distill outputs: the model has one output, so there is nothing to weigh; remove `outputs` "
                "(it weighs the outputs of a model with several)"
            )
        chosen = [spec.outputs.get(name) for name in self.names]
        self.weights = [c.weight if c else 1.0 for c in chosen]
        if self.several and not any(self.weights):
            raise UserError("distill outputs: every output has weight 0, so the student would learn nothing from "
                            "the teacher; give at least one output a weight above 0")  # fmt: skip
        self.normalized = spec.normalize_outputs
        self.losses = [c.loss if c else "mse" for c in chosen]
        self.scales = [1.0] * len(self.names)
        if self.several and spec.normalize_outputs:
            with torch.inference_mode():
                outputs = torch.cat([output_matrix(call(teacher, inputs)) for inputs in scale_inputs])
            parts = outputs.split(self.widths, dim=1)
            self.scales = [scale(part) for part in parts]
        self.totals = [0.0] * len(self.names)

    def loss(self, student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
        """The mean of the outputs' weighted terms; each mse / smooth_l1 measured against its own scale and
        brought back to the outputs' mean scale, so that the term keeps the size one MSE over all outputs
        had (and `alpha` its meaning) while no output's scale outweighs another's."""
        total = torch.zeros(())
        common = sum(self.scales) / len(self.scales)
        pairs = zip(student.split(self.widths, dim=1), teacher.split(self.widths, dim=1), strict=True)
        for index, (s_part, t_part) in enumerate(pairs):
            scale = self.scales[index] / common
            term = self.weights[index] * self._term(self.losses[index], s_part, t_part, temperature, scale)
            self.totals[index] += term.item()
            total = total + term
        return total / len(self.names)

    @staticmethod
    def _term(
        kind: str, student: torch.Tensor, teacher: torch.Tensor, temperature: float, scale: float
    ) -> torch.Tensor:
        if kind == "kl":
            log_student = F.log_softmax(student / temperature, dim=1)
            return (
                F.kl_div(log_student, F.softmax(teacher / temperature, dim=1), reduction="batchmean") * temperature**2
            )
        if kind == "cosine":
            return (1 - F.cosine_similarity(student, teacher, dim=1)).mean()
        distance = F.mse_loss if kind == "mse" else F.smooth_l1_loss
        return distance(student, teacher) / scale

    def findings(self) -> list[str]:
        total = sum(self.totals)
        if not self.several or not total:
            return []
        shares = {name: part / total for name, part in zip(self.names, self.totals, strict=True)}
        notes = [f"teacher loss per output: {', '.join(f'{n} {share:.0%}' for n, share in shares.items())}"]
        for name, share in shares.items():
            if share >= DOMINANT:
                weight = self.weights[self.names.index(name)]
                advice = f"weigh it down with `outputs: {{{name}: {{weight: {weight / 10:g}}}}}`"
                if not self.normalized:
                    advice += " or turn normalize_outputs on"
                notes.append(
                    f"output {name} took {share:.0%} of the teacher loss: the other outputs barely learned from "
                    f"the teacher; {advice}"
                )
        return notes


def scale(teacher: torch.Tensor) -> float:
    """How much an output of the teacher varies across inputs (its per-feature variance, averaged): what
    its errors are measured against. Not its mean square: sigmoid boxes sit near 0.5 whatever the input,
    so their mean square hides how small the differences that matter are. An output that does not vary
    falls back to its mean square."""
    spread = teacher.var(dim=0).mean().item() if len(teacher) > 1 else 0.0
    return max(spread if spread > 1e-12 else teacher.square().mean().item(), 1e-12)


class Hints:
    """Captures the named feature maps of teacher and student and scores their (projected) distance."""

    def __init__(self, spec: DistillSpec, teacher: nn.Module, student: nn.Module, example: Inputs):
        self.features: dict[str, torch.Tensor] = {}
        self.pairs = [(f"s{i}", f"t{i}") for i in range(len(spec.hints))]
        self.hooks = ExitStack()  # closed by `remove`, after training
        captures = []
        for i, hint in enumerate(spec.hints):
            for key, model, name in ((f"s{i}", student, hint.student), (f"t{i}", teacher, hint.teacher)):
                try:
                    module = model.get_submodule(name)
                except AttributeError:
                    raise UserError(
                        f"hints[{i}]: no layer {name!r} in the {'student' if key[0] == 's' else 'teacher'}"
                    ) from None
                captures.append((module, self._capture(key)))
        self.hooks.enter_context(forward_hooks(captures))
        self.projections = nn.ModuleList()
        if self.pairs:
            with torch.no_grad():
                call(teacher, example)
                call(student.eval(), example)
            for s_key, t_key in self.pairs:
                self.projections.append(projection(self.features[s_key], self.features[t_key]))
        self.features.clear()

    def _capture(self, key: str) -> Any:
        def hook(_module: nn.Module, _args: Any, output: Any) -> None:
            if isinstance(output, torch.Tensor):
                self.features[key] = output

        return hook

    def loss(self) -> torch.Tensor:
        total = torch.zeros(())
        for (s_key, t_key), project in zip(self.pairs, self.projections, strict=True):
            student, teacher = project(self.features[s_key]), self.features[t_key].detach()
            if student.dim() == 4 and student.shape[-2:] != teacher.shape[-2:]:
                student = F.adaptive_avg_pool2d(student, teacher.shape[-2:])
            total = total + F.mse_loss(student, teacher)
        return total

    def remove(self) -> None:
        self.hooks.close()


def projection(student: torch.Tensor, teacher: torch.Tensor) -> nn.Module:
    """A learned map from the student's feature width to the teacher's (identity when they match)."""
    s_width, t_width = student.shape[1], teacher.shape[1]
    if s_width == t_width:
        return nn.Identity()
    if student.dim() == 4:
        return nn.Conv2d(s_width, t_width, kernel_size=1, bias=False)
    return nn.Linear(s_width, t_width, bias=False)
