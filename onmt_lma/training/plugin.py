"""The one place where onmt-lma changes OpenNMT-py 3.5.1: :func:`install`.

Importing this module installs the plugin, so that processes OpenNMT-py starts
with the *spawn* method (multi-GPU training and translation) get it too: the
functions they are given to run live here, and unpickling them imports this
module first.

What :func:`install` does, each patched where OpenNMT-py *uses* the name:

* activations -- every activation of :func:`onmt_lma.model.activations.register_activation`
  that OpenNMT-py does not have itself (``lma``, ``prelu``, ``swish``,
  ``aplu``, and any registered later) becomes a valid
  ``-pos_ffn_activation_fn`` choice; after OpenNMT-py builds a model, every
  ``PositionwiseFeedForward`` gets its own module from
  :func:`onmt_lma.model.activations.build_activation` (``ACTIVATION_FUNCTIONS`` holds one shared
  stateless function, unfit for a layer with parameters and statistics);
* options -- ``-lma_segments``, ``-lma_momentum``, ``-lma_continuous`` and
  ``-lma_lr_scale`` join OpenNMT-py's model options, so they are saved in every
  checkpoint and translation rebuilds exactly the trained model;
* quantization-aware training -- ``-quant_bits``/``-quant_bucket`` join the
  model options; with them every linear layer of the built model computes with
  its weight quantized per bucket (straight-through gradients), and a model
  loaded for translation gets those quantized weights (:mod:`onmt_lma.training.qat`);
* optimizer -- with ``-lma_lr_scale`` other than 1 the activations' parameters
  form their own parameter group, whose learning rate is the schedule's times
  the scale (0: frozen, left out of the optimizer);
* initialization -- OpenNMT-py's ``-param_init`` draws *every* parameter
  uniformly; the activations are put back to their documented start values;
* checkpoints -- loaded by torch's ``weights_only`` unpickler with the
  allow-list of :mod:`onmt_lma.base.checkpoint`; an int8 checkpoint
  (:mod:`onmt_lma.training.qat`) is dequantized for OpenNMT-py to build;
* int8 translation -- a model loaded for translation from an int8 checkpoint,
  or with ``-precision int8`` (which OpenNMT-py 3.5.1 silently ignores), gets
  dynamically quantized int8 linear layers;
* logging -- ``-log_file`` keeps receiving the training log (OpenNMT-py's
  corpus iterator would reset the handlers before the first step);
* checkpoints saved atomically -- OpenNMT-py writes ``BASE_step_N.pt`` in
  place, so a kill during a save left a truncated file that resumption took
  for the latest; it is now written as ``BASE.partial_step_N.pt`` and renamed;
* exact resumption -- checkpoints also keep the random state and how many
  steps' batches the run has drawn (in the optimizer's state), and a run
  resumed from its own checkpoint skips those batches and restores that state,
  so it goes on as if never interrupted (:mod:`onmt_lma.training.resume`; OpenNMT-py
  would start the data again at its first batch);
* distillation -- the trainer's training loss gets the teacher of
  ``-kd_teacher`` (:mod:`onmt_lma.training.distill`), and the statistics it logs
  report the KD part next to the NLL part;
* start-up -- spaCy is imported only when used (:mod:`onmt_lma.base.onmt_import`).

Nothing else patches OpenNMT-py, except :class:`onmt_lma.study.benchmark.StepTimer`,
which wraps ``Trainer._gradient_accumulation`` only inside its ``with`` block
to time training steps (benchmarks only).

Private OpenNMT-py names the package relies on, checked against 3.5.1 (the
version ``make venv`` installs): ``ModelSaver._save`` (here);
``Trainer._accum_batches``, ``Trainer._accum_count`` (:mod:`onmt_lma.training.resume`);
``LossCompute._bottle``, ``LossCompute._stats`` (the KD loss, :mod:`onmt_lma.training.distill`);
``Translator._run_encoder``, ``Translator._score_target``,
``Translator._tgt_pad_idx`` (test perplexity in :mod:`onmt_lma.evaluation.measure`);
``ArgumentParser._get_all_transform_translate`` and
``ArgumentParser._validate_transforms_opts`` (translation options built in
:mod:`onmt_lma.evaluation.measure` and ``onmt_lma_distill_data``, as
``onmt_translate`` builds them); configargparse's ``_open_config_files``,
``_config_file_parser`` and ``_ignore_unknown_config_file_keys`` (shared YAML
configs, :class:`onmt_lma.bin.parser.CommandParser`).
"""

import onmt_lma.base.onmt_import  # noqa: F401, I001  (first: before onmt)

import logging
import os

import torch

import onmt.bin.train
import onmt.inference_engine
import onmt.inputters.dynamic_iterator
import onmt.model_builder
import onmt.models.model_saver
import onmt.opts
import onmt.train_single
import onmt.trainer
import onmt.utils
import onmt.utils.loss
import onmt.utils.optimizers
from onmt.modules.position_ffn import ACTIVATION_FUNCTIONS

from onmt_lma.base.checkpoint import checkpoint_loading
from onmt_lma.model.activations import on_register
from onmt_lma.model.options import add_lma_opts
from onmt_lma.model.quantization import QuantizeError, quantize_linears
from onmt_lma.model.quantized_checkpoint import dequantize_checkpoint, trained_bits
from onmt_lma.training.distill import DistillationLossCompute, DistillationStatistics, NonFiniteTrainingError, attach_teacher
from onmt_lma.training.ffn_blocks import ONMT_ACTIVATIONS, START_STATES, _BuiltPerBlock, activation_modules, activation_parameters, attach_activations, check_translation_opts
from onmt_lma.training.qat import add_quant_opts, quantization_aware, quantize_weights_in_place
from onmt_lma.training.resume import KEY as RESUME_KEY, exact_accumulation, resume_state, resumes_own_run


_ORIGINAL = {}


def _scale_group_learning_rates(optimizer, args, kwargs):
    """Step pre-hook: OpenNMT-py sets every group's ``lr`` to the schedule's just before the step."""
    for group in optimizer.param_groups:
        group["lr"] *= group.get("lr_scale", 1.0)


# --------------------------------------------------------------------------- #
# Replacements.  Module-level functions, so that spawned processes unpickle them
# by reference, which imports (and installs) this module.
# --------------------------------------------------------------------------- #
def model_opts(parser):
    """OpenNMT-py's model options plus the plugin's."""
    _ORIGINAL["model_opts"](parser)
    add_lma_opts(parser)
    add_quant_opts(parser)


def build_base_model(model_opt, vocabs):
    return attach_activations(_ORIGINAL["build_base_model"](model_opt, vocabs), model_opt)


def build_model(model_opt, opt, vocabs, checkpoint, device_id):
    model = _ORIGINAL["build_model"](model_opt, opt, vocabs, checkpoint, device_id)
    if checkpoint is None:
        # -param_init drew every parameter uniformly: put the activations back where their factories started them
        for activation in activation_modules(model):
            activation.load_state_dict(START_STATES[activation])
    if getattr(model_opt, "lma_lr_scale", 1.0) == 0:  # frozen: the optimizer never sees them
        for parameter in activation_parameters(model):
            parameter.requires_grad_(False)
    if getattr(model_opt, "lma_int8", False):  # trained on from an int8 checkpoint: float from here on
        model_opt.lma_int8 = False
    bits = trained_bits(opt)
    if bits:  # quantization-aware training (also when fine-tuning a float checkpoint with -train_from)
        # recorded in the options that checkpoints save (with -train_from: the checkpoint's options)
        model_opt.quant_bits, model_opt.quant_bucket = bits, opt.quant_bucket
        count = quantization_aware(model, bits, opt.quant_bucket)
        logging.getLogger("onmt").info("quantization-aware: %d linear layers computed with %d-bit weights "
                                       "(buckets of %d)", count, bits, opt.quant_bucket)
    return model


def build_torch_optimizer(model, opt):
    """OpenNMT-py's optimizer; the activations' parameters in a group of their own
    with ``lr_scale`` = ``-lma_lr_scale`` when it is not 1."""
    optimizer = _ORIGINAL["build_torch_optimizer"](model, opt)
    scale = getattr(opt, "lma_lr_scale", 1.0)
    own = [p for p in activation_parameters(model) if p.requires_grad]
    if scale in (0.0, 1.0) or not own:
        return optimizer
    if len(optimizer.param_groups) != 1:
        raise ValueError(f"-lma_lr_scale is not supported with -optim {opt.optim}")
    own_ids = {id(p) for p in own}
    group = optimizer.param_groups[0]
    group["params"] = [p for p in group["params"] if id(p) not in own_ids]
    optimizer.add_param_group({"params": own, "lr_scale": scale})
    optimizer.register_step_pre_hook(_scale_group_learning_rates)
    return optimizer


def load_test_model(opt, device_id=0, model_path=None):
    """OpenNMT-py's, checked against the translation options, and int8 when the checkpoint is
    (``onmt_lma_quantize``) or ``-precision int8`` asks (OpenNMT-py 3.5.1 ignores it: it compares
    ``"int8"`` with ``torch.int8``)."""
    vocabs, model, model_opt = _ORIGINAL["load_test_model"](opt, device_id, model_path)
    path = model_path or opt.models[0]
    check_translation_opts(opt, model_opt, path)
    bits = trained_bits(model_opt)
    if bits:  # a quantization-aware checkpoint translates with the weights it was trained to have
        count = quantize_weights_in_place(model, bits, model_opt.quant_bucket)
        logging.getLogger("onmt").info("%d-bit weights: %d linear layers (%s)", bits, count, path)
    if getattr(opt, "precision", "") == "int8" or getattr(model_opt, "lma_int8", False):
        if next(model.parameters()).device.type != "cpu":
            raise QuantizeError(f"{path}: int8 translation runs on CPU only; drop -gpu "
                                "(or translate the float checkpoint on the GPU)")
        count = quantize_linears(model)
        logging.getLogger("onmt").info("int8: %d linear layers quantized (%s)", count, path)
    return vocabs, model, model_opt


def load_checkpoint(ckpt_path):
    if not ckpt_path:
        return None
    with checkpoint_loading(ckpt_path):
        return dequantize_checkpoint(_ORIGINAL["load_checkpoint"](ckpt_path))


def unseeded_warning(opt):
    """The warning for a run that nothing makes repeatable (None when it is): OpenNMT-py seeds torch, random and
    numpy only for ``-seed`` > 0, and its default is -1; a run resuming its own checkpoint restores the saved
    random state instead (:mod:`onmt_lma.training.resume`)."""
    if getattr(opt, "seed", -1) > 0 or resumes_own_run(opt):
        return None
    return (f"-seed {getattr(opt, 'seed', -1)} seeds nothing: this run draws its own initial weights, batch order "
            "and dropout and cannot be repeated; give -seed N (N > 0) to make it reproducible")


def build_trainer(opt, device_id, model, vocabs, optim, model_saver=None):
    warning = unseeded_warning(opt)
    if warning:
        logging.getLogger("onmt").warning(warning)
    trainer = _ORIGINAL["build_trainer"](opt, device_id, model, vocabs, optim, model_saver)
    trainer.train_loss.optim = trainer.optim  # the training loss checks itself, naming the step
    return attach_teacher(exact_accumulation(trainer, opt), opt, vocabs)


def optimizer_state_dict(optim):
    """``Optimizer.state_dict`` with what an exact resumption needs (:mod:`onmt_lma.training.resume`)."""
    return {**_ORIGINAL["state_dict"](optim), RESUME_KEY: resume_state(optim)}


def optimizer_load_state_dict(optim, state_dict):
    """``Optimizer.load_state_dict``, keeping the checkpoint's resume state for the trainer."""
    optim.onmt_lma_loaded_resume = state_dict.get(RESUME_KEY)
    return _ORIGINAL["load_state_dict"](optim, {k: v for k, v in state_dict.items() if k != RESUME_KEY})


def init_logger(*args, **kwargs):
    """OpenNMT-py's ``init_logger``, but keeping the handlers already set up.

    OpenNMT-py 3.5.1's corpus iterator calls ``init_logger()`` each time it
    (re)opens a corpus, which drops the ``-log_file`` handler: the training log
    file would stop before the first step.
    """
    logger = logging.getLogger("onmt")
    if logger.handlers:
        return logger
    return _ORIGINAL["init_logger"](*args, **kwargs)


def save_checkpoint_atomically(saver, step, model):
    """``ModelSaver._save`` under a temporary name, renamed once complete; never non-finite weights."""
    broken = [name for name, p in model.named_parameters() if not torch.isfinite(p).all()]
    if broken:
        raise NonFiniteTrainingError(f"not saving the step-{step} checkpoint: {len(broken)} parameter tensors "
                                     f"hold inf or NaN (first {broken[0]}); lower -learning_rate or set -max_grad_norm")
    final_base = saver.base_path
    saver.base_path = final_base + ".partial"
    try:
        path, extra = _ORIGINAL["_save"](saver, step, model)
    finally:
        saver.base_path = final_base
    if path is None:  # another rank saves
        return path, extra
    final = f"{final_base}_step_{step}.pt"
    os.replace(path, final)
    return final, extra


def train_process(opt, device_id):
    """``onmt.train_single.main``, run in this process or a spawned worker."""
    return _ORIGINAL["single_main"](opt, device_id)


def spawned_infer(*args, **kwargs):
    """``onmt.utils.distributed.spawned_infer`` with the plugin installed."""
    return _ORIGINAL["spawned_infer"](*args, **kwargs)


def _patch(name, replacement, *modules):
    """Replace ``name`` in every module that uses it, remembering the original."""
    _ORIGINAL.setdefault(name, getattr(modules[0], name))
    for module in modules:
        setattr(module, name, replacement)


def _expose(name):
    """Make a registered activation a choice of ``-pos_ffn_activation_fn`` (the choices are a live view)."""
    if name not in ONMT_ACTIVATIONS:
        ACTIVATION_FUNCTIONS[name] = _BuiltPerBlock(name)


def install():
    """Install the plugin into OpenNMT-py 3.5.1 (idempotent)."""
    if _ORIGINAL:
        return
    on_register(_expose)  # every registered activation, now and later
    _patch("model_opts", model_opts, onmt.opts)
    _patch("build_base_model", build_base_model, onmt.model_builder)
    _patch("build_model", build_model, onmt.model_builder, onmt.train_single)
    _patch("load_test_model", load_test_model, onmt.model_builder, onmt.utils.loss)
    _patch(
        "load_checkpoint",
        load_checkpoint,
        onmt.models.model_saver,
        onmt.model_builder,
        onmt.train_single,
    )
    _patch("build_trainer", build_trainer, onmt.train_single)
    _patch("build_torch_optimizer", build_torch_optimizer, onmt.utils.optimizers)
    _patch("LossCompute", DistillationLossCompute, onmt.trainer)
    _patch("Statistics", DistillationStatistics, onmt.utils)
    _patch("single_main", train_process, onmt.bin.train)
    _ORIGINAL.setdefault("_save", onmt.models.model_saver.ModelSaver._save)
    onmt.models.model_saver.ModelSaver._save = save_checkpoint_atomically
    optimizer = onmt.utils.optimizers.Optimizer
    _ORIGINAL.setdefault("state_dict", optimizer.state_dict)
    _ORIGINAL.setdefault("load_state_dict", optimizer.load_state_dict)
    optimizer.state_dict, optimizer.load_state_dict = optimizer_state_dict, optimizer_load_state_dict
    _patch("init_logger", init_logger, onmt.inputters.dynamic_iterator)
    _patch("spawned_infer", spawned_infer, onmt.inference_engine)


install()
