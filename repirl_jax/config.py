"""Frozen, validated dataclasses for every knob. Errors name the field and the value."""
from __future__ import annotations

import dataclasses
import math


class ConfigError(ValueError):
    """A bad config key or value: one line naming the field and the value."""

# Logical axis -> mesh axes. Params: FSDP shards the embed dim, tensor parallelism the
# heads / mlp / vocab dims (Megatron-style). Activations (act_*): batch over data+fsdp,
# heads / mlp / vocab over tensor, the residual stream's embed dim unsharded.
DEFAULT_RULES: tuple = (
    ("batch", ("data", "fsdp")),
    ("seq", None),
    ("layers", None),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device mesh. One size may be -1: it takes the devices left over by the others."""

    shape: tuple[int, ...] = (-1, 1, 1)
    axis_names: tuple[str, ...] = ("data", "fsdp", "tensor")
    rules: tuple = DEFAULT_RULES

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(self.shape))
        object.__setattr__(self, "axis_names", tuple(self.axis_names))
        if len(self.shape) != len(self.axis_names):
            raise ConfigError(f"MeshConfig.shape={self.shape}: needs one size per axis {self.axis_names}")
        if sum(s == -1 for s in self.shape) > 1 or any(s == 0 or s < -1 for s in self.shape):
            raise ConfigError(f"MeshConfig.shape={self.shape}: sizes must be positive, at most one -1")
        names = set(self.axis_names)
        for logical, target in self.rules:
            for ax in (target,) if isinstance(target, str) else (target or ()):
                if ax not in names:
                    raise ConfigError(f"MeshConfig.rules: {logical!r} -> {ax!r} is not a mesh axis {self.axis_names}")

    def resolved_shape(self, n_devices: int) -> tuple[int, ...]:
        known = math.prod(s for s in self.shape if s != -1)
        if -1 in self.shape:
            if n_devices % known:
                raise ConfigError(f"MeshConfig.shape={self.shape}: {n_devices} devices not divisible by {known}")
            return tuple(n_devices // known if s == -1 else s for s in self.shape)
        if known != n_devices:
            raise ConfigError(f"MeshConfig.shape={self.shape}: needs {known} devices, have {n_devices}")
        return self.shape


def _check(obj, field: str, ok: bool, why: str):
    if not ok:
        raise ConfigError(f"{type(obj).__name__}.{field}={getattr(obj, field)!r}: {why}")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """AdamW with global-norm clipping and a linear-warmup-then-constant/cosine schedule."""

    lr: float = 5e-7
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    warmup_steps: int = 0
    schedule: str = "constant"  # constant | cosine
    total_steps: int = 0  # cosine decay horizon (updates); 0 with cosine is an error
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8

    def __post_init__(self):
        _check(self, "lr", self.lr >= 0, "must be >= 0")
        _check(self, "grad_clip", self.grad_clip > 0, "must be > 0")
        _check(self, "schedule", self.schedule in ("constant", "cosine"), "expected constant | cosine")
        _check(self, "total_steps", self.schedule != "cosine" or self.total_steps > self.warmup_steps,
               f"cosine needs total_steps > warmup_steps={self.warmup_steps}")


PRM_FORMS = ("head", "head_logprob", "implicit", "shared")
PRM_LOSSES = ("repirl", "prime", "discriminator", "orm", "oracle", "exact", "none", "frozen")
PROCESS_ADV = ("token", "position", "last")
CREDITS = ("last", "prm_error", "exact_error", "prm_step", "exact_step", "logprob_step", "prm_first", "logprob_first",
           "prm_ratio_step", "random_step")
ESTIMATORS = ("rloo", "grpo", "reinforce")


@dataclasses.dataclass(frozen=True)
class PRMConfig:
    """ALGORITHM.md sections 2-3. Options marked [ours] there are ablation switches here."""

    form: str = "head"  # head | head_logprob | implicit | shared (prm.py)
    # repirl | prime | discriminator | orm (BCE of the mean score on the outcome) | oracle (per-token BCE
    # on exact step labels: the ceiling; chain task only) | exact (no PRM: the process reward is the exact
    # step labels themselves, 1 on the correct path, 0 from the first wrong step: the RL ceiling of a perfect
    # PRM; chain task only) | none (no PRM) | frozen (rewards, no update: TTT)
    loss: str = "repirl"
    score: str = "mean"  # trajectory score: mean | sum of token rewards
    pseudo_experts: bool = True  # correct rollouts join the positive set
    negatives: str = "failed"  # failed | all
    importance_weights: bool = True  # false: uniform weights over negatives (GAN/AIRL ablation)
    is_length_norm: bool = False  # [ours] log w / response length
    is_temperature: float = 1.0  # [ours] log w / temperature
    is_clip: float = 0.0  # [ours] cap log w at max(log w) - is_clip; 0 = off
    # [ours] base measure of the EBM p(tau | x) exp(E) / Z(x): uniform (log w = E - log pi_old, as
    # ALGORITHM.md writes Z) | policy (p = pi_old: log w = E, the weights stop chasing unlikely samples)
    is_base: str = "uniform"
    is_scope: str = "prompt"  # per-prompt partition function (ALGORITHM.md section 3) | batch (ablation)
    reward_l2: float = 0.0  # [ours] L2 on token rewards, keeps the energy bounded
    beta: float = 0.05  # implicit form: r = beta * (log pi_phi - log pi_ref)
    head_scale: float = 1.0  # [ours] head forms: r = head_scale * (w . h + b) (+ c log p), a head lr multiplier under Adam
    logprob_init: float = 0.0  # [ours] head_logprob: c at init; 1 starts R at the trunk's log-likelihood (prm.py)
    trunk_lr_scale: float = 1.0  # [ours] head forms: the trunk's updates times this (0 freezes it: a probe on the trunk)
    # [ours] head forms: only the trunk's top trunk_train_layers decoder layers (with its final norm and
    # unembedding) train, the backward pass stopping below them (0 = every layer): a trained trunk at a
    # fraction of the backward cost and activation memory of a large PRM
    trunk_train_layers: int = 0
    # [ours] head_logprob's trunk: repirl (it follows the PRM loss, as the head does) | sft (the energy
    # E = c log p_trunk + H has a normalised factor p_trunk: the trunk takes its exact max-likelihood
    # gradient on the positive set, i.e. SFT on experts and correct rollouts, and the head (w, b, c) the
    # PRM loss; exact for the trunk while H = 0 and c = 1, since E_{p_trunk}[grad log p_trunk] = 0)
    trunk_loss: str = "repirl"
    minibatches: int = 1  # PRM updates per step (groups split evenly)
    microbatches: int = 1  # gradient accumulation inside a minibatch
    optim: OptimConfig = OptimConfig(lr=3e-8, grad_clip=10.0)

    def __post_init__(self):
        _check(self, "form", self.form in PRM_FORMS, f"expected one of {PRM_FORMS}")
        _check(self, "loss", self.loss in PRM_LOSSES, f"expected one of {PRM_LOSSES}")
        _check(self, "score", self.score in ("mean", "sum"), "expected mean | sum")
        _check(self, "negatives", self.negatives in ("failed", "all"), "expected failed | all")
        _check(self, "is_scope", self.is_scope in ("batch", "prompt"), "expected batch | prompt")
        _check(self, "is_base", self.is_base in ("uniform", "policy"), "expected uniform | policy")
        _check(self, "is_temperature", self.is_temperature > 0, "must be > 0")
        _check(self, "is_clip", self.is_clip >= 0, "must be >= 0")
        _check(self, "beta", self.beta > 0, "must be > 0")
        _check(self, "head_scale", self.head_scale > 0, "must be > 0")
        _check(self, "trunk_lr_scale", self.trunk_lr_scale >= 0, "must be >= 0")
        _check(self, "trunk_train_layers", self.trunk_train_layers >= 0, "must be >= 0 (0 = every layer)")
        _check(self, "trunk_train_layers", not self.trunk_train_layers or self.form in ("head", "head_logprob"),
               f"needs a trunk of its own (prm.form=head | head_logprob), not {self.form!r}")
        _check(self, "trunk_loss", self.trunk_loss in ("repirl", "sft"), "expected repirl | sft")
        _check(self, "trunk_loss", self.trunk_loss == "repirl" or self.form == "head_logprob",
               f"sft needs prm.form=head_logprob (the form with the trunk's log-prob), not {self.form!r}")
        _check(self, "minibatches", self.minibatches >= 1, "must be >= 1")
        _check(self, "microbatches", self.microbatches >= 1, "must be >= 1")


@dataclasses.dataclass(frozen=True)
class PolicyConfig:
    """ALGORITHM.md section 4."""

    estimator: str = "rloo"  # rloo | grpo | reinforce
    alpha_o: float = 1.0  # outcome reward weight
    alpha_p: float = 0.05  # process (PRM) reward weight
    format_penalty: float = 0.0  # subtracted from the outcome of a response with no \\boxed{} (TTT: 1)
    whiten: bool = True  # whiten advantages over the batch's response tokens
    process_adv: str = "token"  # [ours] token | position | last (losses.process_rewards)
    # [ours] which tokens of a failed rollout carry its outcome advantage (losses.error_credit): last (all
    # of them) | prm_error (those up to the end of the step the PRM scores lowest) | exact_error (up to the
    # end of the first wrong step by the exact step labels: the ceiling; chain task only) | prm_step,
    # exact_step (that step's tokens only: the steps before it were right and get no blame) | logprob_step
    # (the step with the lowest mean sampler log-prob, alone: the null that locates without a PRM) |
    # prm_first, logprob_first (the first step scored below the rollout's mean step score, alone:
    # losses.first_low_step, by the PRM's rewards or, the null, the sampler log-probs) | prm_ratio_step (the
    # step with the lowest mean r_t - log pi_old(a_t | s_t), alone: its share of the rollout's IS log-weight
    # E - log pi_old, where the PRM prefers the expert's choice most over the policy's; wording both find
    # unlikely cancels) | random_step (one uniformly random step, alone: the zero-information null)
    credit: str = "last"
    clip_low: float = 0.2
    clip_high: float = 0.2
    entropy_coef: float = 0.001  # entropy is maximised
    kl_coef: float = 0.0  # KL to the initial policy (k3 estimator); > 0 keeps a frozen reference
    minibatches: int = 1  # policy updates per step (groups split evenly)
    microbatches: int = 1  # gradient accumulation inside a minibatch
    logit_chunk: int = 0  # sequence chunk for the vocabulary-sized log-softmax; 0 = whole sequence
    optim: OptimConfig = OptimConfig(lr=5e-7, grad_clip=1.0)

    def __post_init__(self):
        _check(self, "estimator", self.estimator in ESTIMATORS, f"expected one of {ESTIMATORS}")
        _check(self, "process_adv", self.process_adv in PROCESS_ADV, f"expected one of {PROCESS_ADV}")
        _check(self, "credit", self.credit in CREDITS, f"expected one of {CREDITS}")
        _check(self, "clip_low", 0 <= self.clip_low < 1, "must be in [0, 1)")
        _check(self, "clip_high", self.clip_high >= 0, "must be >= 0")
        _check(self, "minibatches", self.minibatches >= 1, "must be >= 1")
        _check(self, "microbatches", self.microbatches >= 1, "must be >= 1")
        _check(self, "logit_chunk", self.logit_chunk >= 0, "must be >= 0")


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """Where the policy and the PRM come from: "smollm2" (the packaged model), an HF dir or a
    .gguf file, or "tiny" (a small random model with the SmolLM2 tokenizer, for tests)."""

    policy: str = "tiny"
    prm: str = ""  # "" = the policy's checkpoint
    prm_head: str = ""  # a trained head (WORKDIR/final/prm_head.npz); "" = zero-initialised
    dtype: str = "float32"
    remat: str = "none"
    layer_unroll: int = 1  # models.ModelConfig.layer_unroll: unroll the layer scan of training passes
    tiny_layers: int = 2
    tiny_width: int = 64

    def __post_init__(self):
        _check(self, "dtype", self.dtype in ("float32", "bfloat16"), "expected float32 | bfloat16")
        _check(self, "layer_unroll", self.layer_unroll >= 1, "must be >= 1 (1 = a plain scan over the layers)")


TASKS = ("chain", "gsm_symbolic", "gsm8k", "math", "eurus")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    task: str = "chain"  # chain | gsm_symbolic | gsm8k | math | eurus (file tasks read `path`)
    path: str = ""  # file tasks: the training file (jsonl / parquet in its real format)
    test_path: str = ""  # file tasks: held-out file; "" = the last n_test rows of `path`
    experts_path: str = ""  # optional expert jsonl (problem_id, response) joined onto the problems
    min_steps: int = 1  # chain task difficulty
    max_steps: int = 2
    modulus: int = 0  # chain task: 0 = integers, 10 = single-digit arithmetic modulo 10
    instruction: bool = True  # chain task: append the \\boxed{} instruction to each prompt
    style: str = "words"  # chain task: words | symbols (compact: "7 *3 -4 (mod 10)", lines "7*3=1")
    ops: str = "+-*"  # chain task: the operations drawn from
    operand_max: int = 0  # chain task: operands in 1..operand_max (0: 1..modulus-1, or the integer rules)
    additive_run: int = 0  # chain task: at most this many + / - steps in a row (0: no limit; see data/chain.py)
    filler_rate: float = 0.0  # chain task: expert lines start with a harmless filler word this often (data/chain.py)
    n_train: int = 256
    n_test: int = 32
    seed: int = 0
    prompts_per_step: int = 4  # G after the accuracy filter
    samples: int = 4  # K rollouts per prompt
    experts: int = 1  # E expert solutions per prompt (repeated when a problem has fewer)
    oversample: int = 2  # prompts sampled per kept prompt before the accuracy filter
    acc_low: float = 0.2  # keep prompts whose group accuracy is in [acc_low, acc_high]
    acc_high: float = 0.8
    max_prompt_len: int = 128
    max_new_tokens: int = 48
    temperature: float = 1.0
    # how a rollout token is drawn (sampling.sample_token): "icdf" is the cheap one on CPU; "gumbel"
    # keeps runs that batch differently (2 processes vs 1) on the same tokens despite roundoff
    draw: str = "icdf"
    rollout_prompts: int = 0  # prompts per sampler call (bounds the rollout KV cache); 0 = all at once
    # continuous batching for rollouts, eval and beam search: this many decode slots (the KV cache's
    # rows; a finished row's slot takes the next waiting sample); 0 = the static sampler
    rollout_slots: int = 0

    def __post_init__(self):
        _check(self, "task", self.task in TASKS, f"expected one of {TASKS}")
        _check(self, "path", self.task in ("chain", "gsm_symbolic") or self.path, f"task {self.task!r} reads a file: set data.path")
        _check(self, "samples", self.samples >= 2, "RLOO needs >= 2 rollouts per prompt")
        _check(self, "oversample", self.oversample >= 1, "must be >= 1")
        _check(self, "rollout_prompts", self.rollout_prompts >= 0, "must be >= 0 (0 = all prompts in one call)")
        _check(self, "rollout_slots", self.rollout_slots >= 0, "must be >= 0 (0 = the static sampler)")
        _check(self, "draw", self.draw in ("icdf", "gumbel"), "expected icdf | gumbel")
        _check(self, "rollout_slots", not (self.rollout_slots and self.rollout_prompts),
               f"rollout_prompts={self.rollout_prompts} also bounds the rollout KV cache: set one of the two")
        _check(self, "acc_high", 0 <= self.acc_low <= self.acc_high <= 1, "need 0 <= acc_low <= acc_high <= 1")


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    steps: int = 10
    seed: int = 0
    eval_every: int = 0  # held-out eval every N steps; 0 = only at the end
    eval_samples: int = 0  # > 1: also avg@k and pass@k with k samples at temperature 1
    checkpoint_every: int = 0  # 0 = only at the end
    keep_checkpoints: int = 2
    verify_workers: int = 2
    verify_timeout_s: float = 5.0
    resume_from: int = 0  # 0 = the newest checkpoint that restores; N = checkpoint step N (newer set aside)

    def __post_init__(self):
        _check(self, "steps", self.steps >= 1, "must be >= 1")
        _check(self, "resume_from", self.resume_from >= 0, "must be >= 0 (0: the newest that restores)")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    model: ModelSource = ModelSource()
    data: DataConfig = DataConfig()
    prm: PRMConfig = PRMConfig()
    policy: PolicyConfig = PolicyConfig()
    train: LoopConfig = LoopConfig()
    mesh: MeshConfig = MeshConfig()


def apply_overrides(cfg, overrides: list[str]):
    """`a.b=value` overrides of nested frozen dataclasses, parsed by the field's current type.
    All overrides of one dataclass are applied together, so fields validated against each other
    (data.task and data.path) can be set in any order. An unknown key is rejected with the valid
    ones listed; a bad value names key and value."""
    tree: dict = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected key=value")
        node, path = tree, key.strip().split(".")
        for name in path[:-1]:
            node = node.setdefault(name, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key.strip()}: {name!r} is set as a value and used as a section")
        node[path[-1]] = (raw.strip(), key.strip())
    return _apply(cfg, tree)


def _first_key(tree: dict) -> str:
    sub = next(iter(tree.values()))
    return sub[1] if isinstance(sub, tuple) else _first_key(sub)


def _apply(obj, tree: dict):
    names = [f.name for f in dataclasses.fields(obj)]
    new, last = {}, ""
    for head, sub in tree.items():
        full = sub[1] if isinstance(sub, tuple) else _first_key(sub)
        if head not in names:
            raise ConfigError(f"--set {full}: unknown key {head!r} in {type(obj).__name__}; valid: {', '.join(names)}")
        cur = getattr(obj, head)
        if isinstance(sub, dict):
            if not dataclasses.is_dataclass(cur):
                raise ConfigError(f"--set {full}: {head!r} is a value, not a section")
            new[head] = _apply(cur, sub)
        elif dataclasses.is_dataclass(cur):
            raise ConfigError(f"--set {full}: {head!r} is a section; set one of its fields "
                              f"({', '.join(f.name for f in dataclasses.fields(cur))})")
        else:
            new[head], last = _parse(sub[0], cur, sub[1]), sub[1]
    try:
        return dataclasses.replace(obj, **new)
    except ValueError as e:
        raise ConfigError(f"--set {last or ', '.join(tree)}: {e}") from None


def _parse(raw: str, cur, full: str):
    try:
        if isinstance(cur, bool):
            if raw.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return raw.lower() in ("true", "1")
        if isinstance(cur, int):
            return int(raw)
        if isinstance(cur, float):
            return float(raw)
        if isinstance(cur, tuple):
            return tuple(int(x) for x in raw.strip("()").split(",") if x.strip())
        return raw
    except ValueError:
        raise ConfigError(f"--set {full}={raw}: expected a {type(cur).__name__}") from None


def paper_math_config(policy: str, alpha_p: float) -> TrainConfig:
    """The paper's math setting (ALGORITHM.md sections 5 and 7), shared by configs/qwen*_math.py:
    Eurus-2-RL-Data math with 4 expert traces each, K = 4, prompts up to 1,536 and responses up to
    3,000 tokens, AdamW at lr 5e-7 (policy) / 3e-8 (PRM), clip 1 / 10, one PRM epoch then one policy
    epoch in minibatches of 32 of 128 prompts, no KL, no SFT. Paths are placeholders for `--set`.
    Rollouts go through the sampler 32 prompts at a time (all 256 at once need ~80 GiB of KV cache
    per chip on a v4-32 for Qwen3-4B)."""
    return TrainConfig(
        model=ModelSource(policy=policy, dtype="bfloat16", remat="full"),
        data=DataConfig(task="eurus", path="data/eurus2_rl_math.parquet", experts_path="data/eurus2_experts.jsonl",
                        n_train=7000, n_test=256, prompts_per_step=128, samples=4, experts=4, oversample=2,
                        max_prompt_len=1536, max_new_tokens=3000, rollout_prompts=32),
        prm=PRMConfig(minibatches=4, microbatches=4, optim=OptimConfig(lr=3e-8, grad_clip=10.0)),
        policy=PolicyConfig(alpha_p=alpha_p, minibatches=4, microbatches=4, logit_chunk=512,
                            optim=OptimConfig(lr=5e-7, grad_clip=1.0)),
        # 2 epochs of 7,000 problems at 128 per step
        train=LoopConfig(steps=110, eval_every=10, eval_samples=4, checkpoint_every=5, verify_workers=16),
        mesh=MeshConfig(shape=(1, -1, 1)),  # FSDP over every chip
    )
