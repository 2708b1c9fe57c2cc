"""Typed configuration: one frozen dataclass per component, a docstring per field.

Each component receives only its own section (ActorConfig, ReplayConfig, LearnerConfig,
PixelConfig for the pixel observation wrapper, RelayConfig for the per-node weights
relays); RunConfig holds what the launcher needs.
`common.config_loader` reads these from YAML or TOML, applies `--set section.field=value`
overrides, and validates every field.
"""
from __future__ import annotations

from dataclasses import dataclass

from qfleet.common.settings import Kwargs, setting

EPSILON_SCHEDULES = ("apex", "linear", "exponential", "per_episode")


@dataclass(frozen=True)
class ActorConfig:
    envs_per_actor: int = setting(32, ge=1, le=65536)
    """Environments each actor steps as one vectorized batch (V)."""
    epsilon: str = setting("apex", choices=EPSILON_SCHEDULES)
    """Exploration: 'apex' (fixed per-env eps_i = eps_base^(1 + eps_alpha*i/(K-1)) over all
    K envs of all actors), or a decaying schedule: 'linear' or 'exponential' by env step,
    'per_episode' (multiplied by eps_decay_rate after each finished episode)."""
    eps_base: float = setting(0.4, gt=0, lt=1)
    """Ape-X base epsilon."""
    eps_alpha: float = setting(7.0, ge=0)
    """Ape-X exponent spread across environments."""
    eps_start: float = setting(1.0, ge=0, le=1)
    """Start value of the decaying schedules."""
    eps_end: float = setting(0.01, ge=0, le=1)
    """Final value of the decaying schedules."""
    eps_decay_steps: int = setting(20_000, ge=1)
    """Env steps (per actor) over which 'linear' reaches eps_end, or the time constant of 'exponential'."""
    eps_decay_rate: float = setting(0.995, gt=0, le=1)
    """Factor applied per finished episode by the 'per_episode' schedule."""
    n_step: int = setting(3, ge=1, le=100)
    """Steps of the n-step return computed on the actor."""
    gamma: float = setting(0.99, gt=0, le=1)
    """Discount factor; stored transitions carry gamma**n (0 at termination)."""
    flush_every_steps: int = setting(4, ge=1, le=10_000)
    """Vector steps between pushes to the replay server (batches inserts)."""
    send_timeout_s: float = setting(0.25, gt=0)
    """How long one push may wait for the replay server before the actor re-checks its
    control messages (backpressure from the rate limiter shows up here)."""
    report_every_s: float = setting(0.5, gt=0)
    """Seconds between progress reports (env steps, episode returns, weights version)."""
    relay_fallback_after: float = setting(3.0, ge=1.5, le=100)
    """With a weights relay (relay.enabled): after this many of the relay's republish
    intervals (relay.republish_s) with nothing from the relay, the actor also subscribes to
    the learner, and drops it again once the relay delivers. At least 1.5, so one late
    re-publication does not trigger it."""


@dataclass(frozen=True)
class ReplayConfig:
    capacity: int = setting(50_000, ge=16)
    """Transitions the ring buffer holds; the oldest are overwritten."""
    external: str = setting("")
    """HOST:INSERT_PORT,REQUEST_PORT of a replay server already running on its own
    (`qfleet replay-server`): the run starts none, and its learner and actors use that one
    (local backend). Empty (the default): the run starts its own."""
    frames: bool = setting(True)
    """Observations that are uint8 stacks of frames (k, H, W) (the Atari preset, run.obs =
    pixels) are sent and stored a frame at a time, each frame once, and the stacks rebuilt
    at sample time (replay_server/frames.py): ~7.4 KB per 84x84x4 Atari transition instead
    of 56 KB. False stores every observation whole. Other observations are always whole."""
    frame_codec: str = setting("none", choices=("none", "lz4"))
    """With replay.frames: 'lz4' keeps each stored frame lz4-compressed (the atari extra
    installs lz4). A 7,056-byte 84x84 Atari frame takes 247 bytes in Pong, 405 in
    Breakout, 776 in Seaquest, 1,612 in Space Invaders (docs/bench/replay-codecs.json), so a
    million transitions fit in 0.3-1.7 GB instead of 7.4; decompressing the frames of a
    batch of 256 costs 3-7 ms on one core. zstd compresses 1.3-1.5x tighter but
    decompresses 2-4x slower, and sampling is what the learner waits on. 'none' stores
    frames as they are."""
    prioritized: bool = setting(True)
    """Proportional prioritized sampling (sum-tree); False samples uniformly."""
    alpha: float = setting(0.6, ge=0, le=1)
    """Priority exponent: P(i) ~ p_i**alpha."""
    min_size_to_sample: int = setting(1_000, ge=1)
    """Transitions stored before the first sample is served."""
    samples_per_insert: float = setting(4.0, ge=0)
    """Target ratio of sampled to inserted transitions; 0 turns the rate limiter off
    (only min_size_to_sample applies)."""
    error_buffer: float = setting(0.0, ge=0)
    """Allowed deviation from samples_per_insert, in samples; 0 picks the smallest value
    that cannot deadlock for the configured batch sizes."""
    max_insert_batch: int = setting(4_096, ge=1, le=1 << 20)
    """Largest insert message (transitions) the server accepts; actors split bigger pushes.
    With the rate limiter on, it also sizes the automatic error buffer."""
    max_message_bytes: int = setting(64 * 1024 * 1024, ge=1024)
    """Largest message (all frames) the server accepts; bigger ones are dropped and counted."""
    insert_hwm: int = setting(16, ge=1)
    """ZeroMQ high-water mark (messages) on the insert socket: how much queues before actors block."""
    sample_wait_s: float = setting(1.0, gt=0)
    """How long a sample request may wait for the rate limiter before it is answered 'rate_limited'."""
    snapshot_every_s: float = setting(30.0, ge=0)
    """Seconds between periodic snapshots of the replay contents (atomic, the newest two are
    kept); a restarted replay server resumes from the newest. 0 disables them."""
    shards: int = setting(1, ge=1, le=256)
    """Replay server processes (S). Each shard has its own table, rate limiter, snapshots
    and restarts, and every other field of this section applies to each shard (together
    they hold shards * capacity transitions). Actors are spread evenly over the shards by
    index; the learner draws each sample request's shard in proportion to its total
    priority, so sampling matches one big table (learner/shards.py). The samples-per-insert
    ratio holds globally within shards * error_buffer samples, around an offset of
    shards * samples_per_insert * min_size_to_sample (each shard enforces it on its own
    inserts). 1 is a single replay server. A --resume with another count redistributes the
    stored transitions over the new shards (replay_server/reshard.py)."""


@dataclass(frozen=True)
class LearnerConfig:
    batch_size: int = setting(256, ge=1, le=65_536)
    """Transitions per update."""
    lr: float = setting(2.5e-3, gt=0, le=1)
    """Step size of the optimizer (learner.optimizer)."""
    optimizer: str = setting("adam", choices=("adam", "rmsprop"))
    """'adam', or 'rmsprop': the optimizer of Nature DQN and the MinAtar paper's DQN (which
    used it centred, with alpha 0.95, eps 0.01, lr 2.5e-4 and batches of 32; far slower than
    Adam at batches of 256: docs/games.md). A checkpoint resumes with the optimizer that wrote it."""
    adam_eps: float = setting(1e-5, gt=0)
    """Adam epsilon."""
    rmsprop_alpha: float = setting(0.95, gt=0, lt=1)
    """RMSprop's decay of its running means of the (squared) gradients."""
    rmsprop_eps: float = setting(0.01, gt=0)
    """RMSprop epsilon, added to the root of the (centred) squared-gradient mean as
    torch.optim.RMSprop adds it."""
    rmsprop_centered: bool = setting(True)
    """Centred RMSprop: divide by the gradients' running standard deviation rather than
    their root mean square."""
    hidden: tuple[int, ...] = setting((128, 128), min_len=1, ge=1)
    """Hidden layer sizes of the MLP Q-network."""
    network: str = setting("auto", choices=("auto", "mlp", "cnn"))
    """Q-network kind. 'auto': a CNN for image observations, an MLP for any other Box. An
    image is a 3-D uint8 or bool Box with its channel axis at one end (CHW, e.g. (4, 84, 84)
    frame stacks; or HWC, e.g. (10, 10, 4) MinAtar grids and (210, 160, 3) screens): the
    channel axis is an end axis no longer than the other two, HWC when both ends qualify.
    Frames of at least 36x36 get the Nature DQN torso (Mnih et al. 2015), smaller ones the
    MinAtar paper's torso (one 16-channel 3x3 convolution). 'mlp' flattens any observation;
    'cnn' forces a CNN by the shape rule alone (any dtype; floats are not rescaled) and is
    refused for observations without a channel axis."""
    torso: str = setting("auto", choices=("auto", "nature", "nips2013", "minatar"))
    """Convolutional torso of a CNN Q-network. 'auto': the Nature torso for frames of at
    least 36x36, the MinAtar one below. 'nips2013' is the first DQN's (Mnih et al. 2013:
    16 8x8 stride 4, 32 4x4 stride 2, 256 dense units), a third of the Nature torso's
    arithmetic: twice the updates per second of a CPU learner on 84x84 frames
    (docs/games.md)."""
    cnn_hidden: tuple[int, ...] = setting((), ge=1)
    """Dense layer sizes after the convolutional torso of the CNN Q-network; empty (the
    default) uses the torso's own: 512 after the Nature torso, 256 after the 2013 one, 128
    after the MinAtar one."""
    dueling: bool = setting(False)
    """Dueling heads (value + advantage), as Ape-X uses them; deploy/configs/minatar.yaml turns
    them on (level with the plain heads in MinAtar or ahead of them: docs/games.md)."""
    target_update: str = setting("polyak", choices=("hard", "polyak"))
    """Target network update: periodic hard copy or Polyak averaging."""
    target_period: int = setting(500, ge=1)
    """Updates between hard target copies."""
    tau: float = setting(0.02, gt=0, le=1)
    """Polyak coefficient per update."""
    huber_delta: float = setting(1.0, gt=0)
    """Huber loss threshold."""
    grad_clip: float = setting(10.0, gt=0)
    """Gradient norm clipping."""
    beta_start: float = setting(0.4, ge=0, le=1)
    """Importance-sampling exponent at the first update (annealed to beta_end)."""
    beta_end: float = setting(1.0, ge=0, le=1)
    """Importance-sampling exponent after beta_anneal_updates."""
    beta_anneal_updates: int = setting(20_000, ge=1)
    """Updates over which beta goes linearly from beta_start to beta_end."""
    priority_eps: float = setting(1e-3, gt=0)
    """Added to |TD error| to form the priority, so no transition gets zero probability."""
    prefetch: int = setting(12, ge=1, le=64)
    """Sample requests kept in flight to the replay server. Deep enough to cover scheduling
    delays: on 2 busy cores, 4 left the learner waiting 30% of the time, 12 left it 3%."""
    batches_per_request: int = setting(4, ge=1, le=64)
    """Batches the replay server returns per sample request (fewer messages per update)."""
    publish_every: int = setting(50, ge=1)
    """Updates between weight publications (each publication gets a new version)."""
    republish_s: float = setting(1.0, gt=0)
    """Seconds between re-publications of the latest weights, for late or restarted actors."""
    device: str = setting("auto", choices=("auto", "cpu", "cuda"))
    """Learner device: 'auto' picks CUDA when present, else the CPU."""
    backend: str = setting("auto", choices=("auto", "numpy", "torch"))
    """Update implementation: 'auto' uses numpy for MLPs on the CPU (several times faster
    than torch for small networks) and torch on CUDA and for CNNs."""
    cuda_graphs: bool = setting(True)
    """On CUDA, capture the whole update (forward, target, loss, backward, clipping, Adam,
    Polyak) once as a CUDA graph and replay it: one launch per update instead of ~50."""
    precision: str = setting("auto", choices=("auto", "fp32", "bf16"))
    """Arithmetic of the forward and backward passes on CUDA: 'bf16' autocast (weights, Adam
    and the loss stay float32), 'fp32', or 'auto' (bf16 for CNNs where the GPU supports it,
    fp32 otherwise). The CPU always computes in fp32."""
    threads: int = setting(1, ge=1, le=256)
    """CPU threads for the learner's math (BLAS and torch intra-op). 1 suits small networks
    and keeps the learner from fighting the actors for cores."""
    eval_every_s: float = setting(0.5, gt=0)
    """Seconds between greedy evaluations (each starts when the previous finished)."""
    eval_episodes: int = setting(100, ge=1, le=10_000)
    """Episodes per greedy evaluation (run as one vectorized batch)."""
    eval_epsilon: float = setting(0.0, ge=0, le=1)
    """Exploration of the evaluation policy: 0 plays greedily; papers score with a little
    (0.05 in Nature DQN's protocol, 0.1 in MinAtar's). Every evaluation, the best weights
    kept in the checkpoint and the solved test use it; reports name it."""
    solved_threshold: float | None = setting(None)
    """Evaluation mean that counts as solved; None uses the environment's reward threshold."""
    sample_timeout_s: float = setting(10.0, gt=0)
    """How long the learner waits for a batch before reporting the replay server as dead
    (with several shards: before reporting that no shard answers)."""
    sample_retry_s: float = setting(3.0, gt=0)
    """A sample request unanswered this long is given up and sent again (it was lost with a
    restarting replay server). With several shards, a shard whose request was given up with
    no reply since leaves the draw while the others serve, and gets one probe request every
    sample_retry_s until it answers. Keep it above replay.sample_wait_s, or a shard that is
    only rate-limited looks dead."""
    checkpoint_every_s: float = setting(30.0, ge=0)
    """Seconds between periodic checkpoints (atomic); a restarted learner resumes from the
    newest. 0 writes only the final one."""


@dataclass(frozen=True)
class RunConfig:
    env: str = setting("CartPole-v1")
    """Gymnasium environment id (ALE/<Game>-v5 and MinAtar/<Game>-v1 with the atari and
    minatar extras), or 'package.module:Class' for your own environment."""
    env_kwargs: Kwargs = setting(Kwargs())
    """Keyword arguments for gym.make, in every process that makes the environment, e.g.
    {repeat_action_probability: 0.0} for ALE games (--set run.env_kwargs='{...}'); they are
    kept in checkpoints, so qfleet eval plays the same environment."""
    preset: str = setting("auto", choices=("auto", "none"))
    """'auto': ALE/<Game>-v5 ids get the Atari preset (common/atari.py: no-op starts, frame
    skip 4 with max-pooling, grey 84x84 stacks of 4, sticky actions, 108k-frame cap, reward
    clipping and life loss as terminal for learning only, raw scores reported), played by
    ale-py's native vector env; 'none': the environment as gym.make gives it."""
    obs: str = setting("vector", choices=("vector", "pixels"))
    """What the agent observes: 'vector' (the environment's own observations, MLP Q-network)
    or 'pixels' (its rendered frames, preprocessed and stacked as the pixels section says,
    CNN Q-network)."""
    seed: int = setting(0, ge=0)
    """Seed for environments, exploration and network initialisation."""
    actors: int = setting(2, ge=1, le=4096)
    """Actor processes."""
    backend: str = setting("local", choices=("local", "ray"))
    """Where the components run: plain local processes, or Ray actors."""
    max_seconds: float = setting(600.0, gt=0)
    """Wall-clock budget of this session: a resumed run gets it afresh, while its records'
    time stamps (time/elapsed_s) go on from the earlier sessions' seconds."""
    max_env_steps: int = setting(0, ge=0)
    """Env-step budget (all actors together); 0 means no limit."""
    max_updates: int = setting(0, ge=0)
    """Learner-update budget; 0 means no limit."""
    max_evaluations: int = setting(0, ge=0)
    """Greedy-evaluation budget: stop after this many evaluations have finished in this
    run (a resumed run counts from zero); 0 means no limit."""
    stop_when_solved: bool = setting(True)
    """Stop as soon as a greedy evaluation reaches the solved threshold."""
    run_dir: str = setting("runs")
    """Folder under which each run gets its own directory."""
    name: str = setting("")
    """Run name; empty picks '<env>-<timestamp>'."""
    status_every_s: float = setting(1.0, gt=0)
    """Seconds between live status lines."""
    max_actor_restarts: int = setting(20, ge=0)
    """Crashed-actor restarts before the run gives up."""
    max_core_restarts: int = setting(3, ge=0)
    """Restarts of a crashed replay server (from its newest snapshot) or learner (from its
    newest checkpoint) before the run gives up; 0 stops the run at the first crash."""


@dataclass(frozen=True)
class RayConfig:
    address: str = setting("")
    """Ray cluster to use: '' connects to the cluster of a Ray job or starts a local Ray,
    'auto' or 'HOST:PORT' connects to a running cluster."""
    actor_cpus: float = setting(0.25, ge=0)
    """CPUs reserved per actor (fractions let several share a core)."""
    replay_cpus: float = setting(0.5, ge=0)
    """CPUs reserved for the replay server."""
    learner_cpus: float = setting(1.0, ge=0)
    """CPUs reserved for the learner."""
    learner_gpus: float = setting(-1.0, ge=-1)
    """GPUs for the learner; -1 asks for one GPU when the cluster has any, else none."""
    replay_resource: str = setting("qfleet_replay")
    """Custom resource that pins the replay server to a node type, used when the cluster
    offers it (declare it in the node type's resources in the cluster YAML)."""
    learner_resource: str = setting("qfleet_learner")
    """Custom resource that pins the learner, used when the cluster offers it."""
    actor_resource: str = setting("qfleet_actor")
    """Custom resource that keeps actors on actor node types, used when the cluster offers it."""
    spread_actors: bool = setting(True)
    """Spread actors across nodes (Ray's SPREAD strategy) instead of packing them."""
    curve: bool = setting(True)
    """Encrypt and authenticate every ZeroMQ socket with per-run CURVE keys."""


@dataclass(frozen=True)
class RelayConfig:
    enabled: bool = setting(False)
    """Run one weights relay per node (actors/weights_relay.py): it subscribes to the
    learner and re-publishes to the actors of its node, so the learner sends each weights
    version once per node instead of once per actor. Actors fall back to the learner while
    their relay is down (actor.relay_fallback_after)."""
    republish_s: float = setting(1.0, gt=0)
    """Seconds between the relay's re-publications of its latest weights, for late or
    restarted actors (the learner's own re-publications are not forwarded)."""


@dataclass(frozen=True)
class PixelConfig:
    size: int = setting(84, ge=36, le=512)
    """Side of the square grayscale frames the CNN sees (the DQN torso needs at least 36)."""
    frame_stack: int = setting(4, ge=1, le=16)
    """Frames per observation, newest last; the first frame of an episode fills the whole stack."""
    crop: tuple[float, ...] = setting((), ge=0, le=1)
    """Part of the rendered frame kept before downscaling, as fractions (top, bottom, left,
    right); empty: the band of the screen where CartPole's cart and pole move, the whole
    frame for other environments."""
    renderer: str = setting("auto", choices=("auto", "stock", "fast"))
    """Where frames come from: 'stock', the environment's own rgb_array rendering; 'fast',
    qfleet's vectorized CartPole renderer (the same scene drawn from the state, ~25x faster,
    checked against the stock one); 'auto', fast for CartPole and stock otherwise."""


@dataclass(frozen=True)
class QfleetConfig:
    """The whole resolved configuration of a run (what the run directory saves)."""

    actor: ActorConfig = ActorConfig()
    replay: ReplayConfig = ReplayConfig()
    learner: LearnerConfig = LearnerConfig()
    run: RunConfig = RunConfig()
    ray: RayConfig = RayConfig()
    pixels: PixelConfig = PixelConfig()
    relay: RelayConfig = RelayConfig()


SECTIONS = {"actor": ActorConfig, "replay": ReplayConfig, "learner": LearnerConfig, "run": RunConfig,
            "ray": RayConfig, "pixels": PixelConfig, "relay": RelayConfig}


# -- baselines (`qfleet baseline ...`): single-process learners that write the same metrics --

@dataclass(frozen=True)
class BaselineRunConfig:
    env: str = setting("CartPole-v1")
    """Gymnasium environment id (ALE/<Game>-v5 and MinAtar/<Game>-v1 with the atari and
    minatar extras), or 'package.module:Class' for your own environment."""
    env_kwargs: Kwargs = setting(Kwargs())
    """Keyword arguments for gym.make (--set baseline.env_kwargs='{...}'), as run.env_kwargs."""
    seed: int = setting(0, ge=0)
    """Seed for environments, sampling and initialisation."""
    max_seconds: float = setting(120.0, gt=0)
    """Wall-clock budget of the run."""
    max_episodes: int = setting(5_000, ge=0)
    """Training-episode budget; 0 means no limit."""
    eval_every_episodes: int = setting(100, ge=1)
    """Training episodes between greedy evaluations of the current (or best) policy."""
    eval_episodes: int = setting(100, ge=1, le=10_000)
    """Episodes per greedy evaluation (run as one vectorized batch)."""
    solved_threshold: float | None = setting(None)
    """Evaluation mean that counts as solved; None uses the environment's reward threshold."""
    stop_when_solved: bool = setting(True)
    """Stop as soon as a greedy evaluation reaches the solved threshold."""
    run_dir: str = setting("runs")
    """Folder under which each run gets its own directory."""
    name: str = setting("")
    """Run name; empty picks '<method>-<env>-<timestamp>'."""
    status_every_s: float = setting(1.0, gt=0)
    """Seconds between live status lines (and metric records)."""


@dataclass(frozen=True)
class RandomSearchConfig:
    episodes_per_candidate: int = setting(5, ge=1, le=10_000)
    """Episodes each random linear policy plays; the best mean return is kept (1 lets a lucky
    episode win for good)."""
    weight_scale: float = setting(1.0, gt=0)
    """Standard deviation of the sampled weights and biases."""


@dataclass(frozen=True)
class ReinforceConfig:
    hidden: tuple[int, ...] = setting((32,), min_len=1, ge=1)
    """Hidden layer sizes of the policy network (tanh units, softmax over actions)."""
    lr: float = setting(0.01, gt=0, le=1)
    """Adam learning rate."""
    gamma: float = setting(0.99, gt=0, le=1)
    """Discount of the returns that weight each action's log-probability."""
    episodes_per_update: int = setting(8, ge=1, le=4096)
    """Episodes played (as one vectorized batch) per gradient step."""
    normalize_returns: bool = setting(True)
    """Subtract the batch mean from the discounted returns and divide by their std (a baseline
    that cuts the gradient's variance)."""


BASELINE_SECTIONS = {"baseline": BaselineRunConfig, "random_search": RandomSearchConfig,
                     "reinforce": ReinforceConfig}
