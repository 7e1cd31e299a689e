"""Defaults and limits, in one place.

Constants and the small frozen records of limits built from them; nothing here
imports the rest of the project, so every module may import this one. Each
component's settings (what one process was started with) are its own:
:mod:`fractalq.coordinator.settings`, :mod:`fractalq.worker.settings`,
:mod:`fractalq.operator.settings`.

The command line, the operator's environment variables and the Helm chart's
values are views of the numbers here: change a default here and every one of
them follows (the chart's ``values.yaml`` mirrors these by hand and a test
compares the two).
"""

from __future__ import annotations

import dataclasses

# ---- network -------------------------------------------------------------

DEFAULT_HOST = "127.0.0.1"  # local use; the chart passes 0.0.0.0 itself
DEFAULT_PORT = 50051
DEFAULT_HTTP_PORT = 8080
# The largest gRPC message, sent or received, by the coordinator and by every
# client alike: a SubmitJob of MAX_JOB_BYTES of payloads (plus their framing)
# fits, and the limits below keep every reply under it (a GetStats of
# MAX_WORKERS workers, a ListJobs of MAX_LIST_LIMIT jobs, a job's results).
MAX_MESSAGE_BYTES = 32 * 1024 * 1024
# A watch sends one message per burst of changes: at most one every
# WATCH_COALESCE seconds while the job runs, and its final state at once.
WATCH_COALESCE = 0.02
# Keepalive: a client pings the coordinator after KEEPALIVE_TIME seconds without
# traffic on a call (a watch of a queued job, a worker's heartbeat stream between
# beats) and drops the connection if no answer comes within KEEPALIVE_TIMEOUT, so
# a silently dead path (a NAT or proxy that forgot the flow) ends the call and the
# client reconnects, instead of waiting forever. The coordinator accepts pings
# every KEEPALIVE_MIN_INTERVAL seconds; more often is answered with GOAWAY.
KEEPALIVE_TIME = 20.0
KEEPALIVE_TIMEOUT = 10.0
KEEPALIVE_MIN_INTERVAL = 10.0

# ---- security ------------------------------------------------------------

# Role tokens (--auth-tokens, --token-file): long enough not to be guessed.
MIN_TOKEN_LENGTH = 16
MAX_TOKEN_LENGTH = 1024
# A token line's holder name (ROLE TOKEN [NAME]): who owns the jobs it submits.
# A line without one gets "token-" and this many hex digits of a digest of the token.
MAX_HOLDER_NAME_LENGTH = 64
HOLDER_DIGEST_DIGITS = 8
# `fractalq certs`: days a generated certificate is valid; the CA outlives them.
CERT_DAYS = 365
CA_DAYS = 10 * 365
# The diagnostic TLS handshake a client makes after a failed call, to say why.
TLS_DIAGNOSE_TIMEOUT = 5.0
# Refused requests (malformed, no valid token, a role that may not) are said in
# one log line at most this often, with the counts since the last one.
REFUSED_LOG_INTERVAL = 5.0

# ---- queue ---------------------------------------------------------------

DEFAULT_PRIORITY = 10
DEFAULT_MAX_ATTEMPTS = 3
MAX_ATTEMPTS_LIMIT = 100
MAX_TASKS_PER_JOB = 1_000_000
MAX_PAYLOAD_BYTES = 1024 * 1024
# All the payloads of one job, and of every unfinished job together.
MAX_JOB_BYTES = 16 * 1024 * 1024
MAX_QUEUED_BYTES = 256 * 1024 * 1024
MAX_ACTIVE_JOBS = 100_000
# What a task may return (a longer result fails the attempt), and all the
# results one GetJob may carry.
MAX_RESULT_BYTES = 64 * 1024
MAX_RESULTS_REPLY_BYTES = 16 * 1024 * 1024
# Ids of jobs and workers: 1-128 of letters, digits and . _ : - (see
# coordinator/validation.py), so they are safe in logs, storage keys and URLs.
MAX_JOB_ID_LENGTH = 128
MAX_WORKER_ID_LENGTH = 128
MAX_HOSTNAME_LENGTH = 253  # a DNS name's limit
MAX_WORKERS = 1000
MAX_TASK_TYPES = 32
MAX_TASK_TYPE_LENGTH = 64
MAX_CONCURRENCY = 1024
# Labels: printable text; keys like Kubernetes' (prefix/name), values shorter.
MAX_LABELS = 32
MAX_LABEL_KEY_LENGTH = 128
MAX_LABEL_VALUE_LENGTH = 256
MAX_REASON_LENGTH = 2000
MAX_LIST_LIMIT = 1000
PRIORITY_RANGE = (-1_000_000, 1_000_000)
# A failed or cancelled job's cleanup task runs as the job "<job_id>.cleanup".
CLEANUP_SUFFIX = ".cleanup"

# Dead letters: a task's failed attempts are kept with their errors (the last
# MAX_ATTEMPT_ERRORS of each task, each cut to MAX_ATTEMPT_ERROR_LENGTH; at most
# MAX_ERRORS_IN_MEMORY in all, beyond which a task keeps its last error only).
# A failed job keeps its payloads and its dead tasks' errors until it is
# requeued, purged or forgotten (the retention); they count in MAX_QUEUED_BYTES.
MAX_ATTEMPT_ERRORS = 10
MAX_ATTEMPT_ERROR_LENGTH = 1000
MAX_ERRORS_IN_MEMORY = 100_000

# Quotas: what one holder of a token (ROLE TOKEN [NAME]) may have on the queue
# at once, enforced when tokens are on (an admin token has none); 0: no limit.
# Unfinished jobs, tasks of its unfinished jobs not yet done, and the pixels of
# one job (a 16384-square image: a PNG of some 100-500 MB).
QUOTA_ACTIVE_JOBS = 1000
QUOTA_QUEUED_TASKS = 1_000_000
QUOTA_JOB_PIXELS = 16384 * 16384

# Time limits: seconds one attempt of a task may run before its worker stops it
# and reports it failed. A task type without a limit of its own gets the
# default; bands get BAND_TIME_LIMIT; a job may set its own, up to the maximum.
DEFAULT_TIME_LIMIT = 3600.0
BAND_TIME_LIMIT = 600.0
MAX_TIME_LIMIT = 7 * 24 * 3600.0

# Leases and liveness.
DEFAULT_WORKER_TIMEOUT = 15.0
HEARTBEATS_PER_TIMEOUT = 3
MAX_LONG_POLL_SECONDS = 30.0
# SubmitJobRequest.wait_seconds: the longest a SubmitJob waits for its job's end
# before it answers with the job as it stands.
MAX_SUBMIT_WAIT_SECONDS = 600.0
# `submit --wait`, `render` and `Client.run` wait this long in the SubmitJob
# itself (one round trip for a job that ends by then); a job still running
# after that is followed with WatchJob, which shows its progress.
SUBMIT_WAIT = 2.0
MAX_TASKS_PER_LEASE = 1000
# Requests of one Work stream being served at once (a worker has two or three: a
# long poll, a report); past that the coordinator reads no more of the stream
# until one is answered, so a worker cannot pile up waiting requests.
MAX_WORK_REQUESTS_IN_FLIGHT = 32

# Backoff: every retry in fractalq waits by one formula (fractalq/retry.py):
# after failed attempt n, between half and all of min(max, base * 2**(n-1))
# ("equal jitter"), with the base and max below for each use. Here: a failed
# task, put back in the queue by the coordinator.
RETRY_BASE_DELAY = 0.5
RETRY_MAX_DELAY = 30.0

# Persistence: reports are committed in groups, at most this often.
COMMIT_INTERVAL = 0.005
# Finished jobs kept in memory (for GetJob and the HTTP API); older ones are
# still in the database.
FINISHED_JOBS_IN_MEMORY = 1000
# Finished jobs are forgotten (memory and database) this many seconds after they
# finished; 0 keeps them forever. Checked every RETENTION_SWEEP seconds, or every
# half retention when that is shorter.
DEFAULT_RETENTION = 7 * 24 * 3600.0
MAX_RETENTION = 10 * 365 * 24 * 3600.0
RETENTION_SWEEP = 60.0
# Orphans: a job's intermediate objects (its bands) are removed by its own tasks,
# but a coordinator that lost its database forgets jobs that had some. Every
# ORPHAN_SWEEP_INTERVAL seconds (0: never; needs a retention) the coordinator
# queues one SWEEP_TASK_TYPE task, at SWEEP_PRIORITY, that removes the objects
# under jobs/ of jobs it does not know, once they are older than the retention.
# Finished images are kept: they are what users asked for.
ORPHAN_SWEEP_INTERVAL = 3600.0
SWEEP_TASK_TYPE = "storage.sweep"
SWEEP_JOB_PREFIX = "sweep-"
SWEEP_PRIORITY = 1000
DEFAULT_LIST_LIMIT = 100

# /metrics: the buckets (seconds) of the histograms of how long task attempts
# ran on their workers, by task type and outcome (a noop in a millisecond, a
# deep band for minutes), and how long tasks waited ready in the queue before a
# worker leased them, by task type (nothing on an idle queue, hours behind a
# large render).
RUNTIME_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                   30.0, 60.0, 300.0, 900.0, 3600.0)  # fmt: skip
QUEUE_WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                      30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0)  # fmt: skip

# ---- dashboard (the coordinator's HTTP port, coordinator/web/) -------------

# Browser sessions: a token entered once becomes a random session cookie of the
# token's role, valid this long; at most this many live at once (the oldest go).
SESSION_LIFETIME = 12 * 3600.0
MAX_SESSIONS = 10_000
SESSION_COOKIE = "fractalq_session"
# The overview is one snapshot a tick, shared by every watcher; its history
# (throughput, queue depth) covers this many ticks.
DASHBOARD_TICK = 1.0
DASHBOARD_HISTORY = 600
DASHBOARD_JOBS = 50  # rows of the jobs table
# Live previews: each band's result carries its rows of a preview image at most
# PREVIEW_SIZE pixels on its longer side (whatever the image's size; the page
# shows it about that wide), JPEG-coded
# in at most PREVIEW_MAX_BYTES (a band with more rows drops quality, then the
# preview). The coordinator keeps the previews of PREVIEW_JOBS jobs, at most
# PREVIEW_MEMORY bytes together, the least recently changed going first.
PREVIEW_SIZE = 512
PREVIEW_QUALITY = 75
PREVIEW_MAX_BYTES = 40 * 1024
PREVIEW_JOBS = 64
PREVIEW_MEMORY = 32 * 1024 * 1024

# ---- worker --------------------------------------------------------------

DEFAULT_CONCURRENCY = 1
# A read-only folder of kernels compiled ahead (the image sets it): copied into
# numba's writable NUMBA_CACHE_DIR before the first kernel loads
# (fractalq/fractal/kernel_cache.py makes it, fractalq/fractal/numba_cache.py reads it).
KERNEL_CACHE_VARIABLE = "FRACTALQ_KERNEL_CACHE"
# Tasks a worker leases beyond those it runs, so that the next one is at hand
# when a task ends (no round trip between two tasks); handed back at once when
# the worker stops. Other workers cannot take a prefetched task meanwhile.
DEFAULT_PREFETCH = 1
# Short tasks (each ran under SHORT_TASK_SECONDS) are leased in growing batches,
# up to MAX_PREFETCH_BATCH beyond the prefetch, while the queue has more of them;
# a longer task brings the batch back to --prefetch (see worker/window.py).
SHORT_TASK_SECONDS = 0.002
MAX_PREFETCH_BATCH = 256
DEFAULT_GRACE_PERIOD = 25.0  # below Kubernetes' default 30 s termination grace
# How long `fractalq render` keeps trying to follow its job when it loses the
# coordinator (a restart, a network cut) before it gives up.
RENDER_RECONNECT_TIMEOUT = 300.0
# The worker reconnecting to a coordinator it lost (the backoff formula above).
RECONNECT_BASE_DELAY = 0.2
RECONNECT_MAX_DELAY = 5.0
REPORT_BATCH = 256
# While short tasks are leased in batches, a worker waits this long after a task
# ends before it reports, so that one CompleteTask carries the few that end next.
REPORT_LINGER = 0.002
# A storage outage: a task whose storage calls still fail transiently after the
# storage layer's own tries (STORAGE_ATTEMPTS, below) is not failed. Its worker
# keeps the lease (and the attempt), takes no new task and probes the storage
# with this backoff; once a probe succeeds the task runs again. Only a task
# that has waited for storage longer than STORAGE_OUTAGE_LIMIT seconds fails
# (and then the attempt counts).
STORAGE_PROBE_BASE_DELAY = 0.5
STORAGE_PROBE_MAX_DELAY = 5.0
STORAGE_OUTAGE_LIMIT = 30 * 60.0
MAX_STORAGE_OUTAGE_LIMIT = 7 * 24 * 3600.0
# What a worker says about its storage in heartbeats and the worker list: one
# line, cut to this length by the coordinator.
MAX_STORAGE_ERROR_LENGTH = 300


@dataclasses.dataclass(frozen=True)
class QueueLimits:
    """The limits the coordinator enforces on what clients send."""

    max_tasks_per_job: int = MAX_TASKS_PER_JOB
    max_payload_bytes: int = MAX_PAYLOAD_BYTES
    max_attempts: int = MAX_ATTEMPTS_LIMIT
    default_max_attempts: int = DEFAULT_MAX_ATTEMPTS
    max_job_bytes: int = MAX_JOB_BYTES
    max_queued_bytes: int = MAX_QUEUED_BYTES
    max_active_jobs: int = MAX_ACTIVE_JOBS
    max_result_bytes: int = MAX_RESULT_BYTES
    max_workers: int = MAX_WORKERS


@dataclasses.dataclass(frozen=True)
class HolderQuota:
    """What one holder of a token may have on the queue at once (0: no limit)."""

    active_jobs: int = QUOTA_ACTIVE_JOBS
    queued_tasks: int = QUOTA_QUEUED_TASKS
    job_pixels: int = QUOTA_JOB_PIXELS


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """Capped exponential backoff: attempt n waits up to base * 2**(n-1), at most cap.

    The defaults are a failed task's; :func:`fractalq.retry.retry_delay` draws the wait.
    """

    base_delay: float = RETRY_BASE_DELAY
    max_delay: float = RETRY_MAX_DELAY


RECONNECT_BACKOFF = RetryPolicy(RECONNECT_BASE_DELAY, RECONNECT_MAX_DELAY)


# ---- images --------------------------------------------------------------

MAX_DIMENSION = 65536
MAX_PIXELS = 65536 * 65536  # 4.3 G pixels: a 65536-square image
# A band has at most this many pixels: a larger image is cut into more bands
# than --regions asks for, so that a worker's memory stays bounded whatever the
# image's size. A band of 4 M pixels peaks at about 60 MiB over a worker's
# resting 145 MiB (128 rows of a 32768-wide image: 203 MiB in all).
MAX_BAND_PIXELS = 4 * 1024 * 1024
# A small image gets fewer bands than --regions asks for: one per MIN_BAND_WORK
# of its pixels times max_iter (the most iterations its kernel could run). A
# 1200x800 image at max_iter 256 is then 2 bands rather than 8; at 1000, 8.
MIN_BAND_WORK = 1 << 27
MAX_ITERATIONS = 1_000_000
DEFAULT_WIDTH = 1200
DEFAULT_HEIGHT = 800
DEFAULT_REGIONS = 8
DEFAULT_MAX_ITER = 256
DEFAULT_JULIA_C = (-0.7, 0.27015)
# Workers deflate their bands' rows (in groups of 16, see fractalq/fractal/png.py)
# with ISA-L (the isal package) at this level, 0..2; the assembler only copies
# them. Per 1200x800 Mandelbrot band: level 1 about 9-10 ms for 630 kB, level 0
# 6 ms / 750 kB, level 2 as level 1 but slower (zlib level 6, row by row, took
# 150 ms for 530 kB). ISA-L's level 3 is refused: its bytes differ between
# AVX-512, AVX2 and older CPUs.
IMAGE_COMPRESS_LEVEL = 1
# An image of at most this many bytes of pixels (W x H x 3) is made in memory and
# stored in one put: assembled so, and, when it is one band, made by its band task
# with no assembly task at all. A larger one goes through a temporary file, so the
# assembler's memory stays one band's whatever the image's size.
SMALL_IMAGE_BYTES = 16 * 1024 * 1024
DEFAULT_FRACTAL = "mandelbrot"
DEFAULT_PALETTE = "classic"
# How iteration values are laid on the palette: sqrt (cyclic, today's images),
# linear or log (one trip over 0..max_iter), auto (one trip over the view's own
# range, measured by a probe render of PROBE_SIDE pixels on its longer side,
# from the PROBE_LOW to the PROBE_HIGH quantile of its outside pixels' values).
DEFAULT_COLOUR_SCALE = "sqrt"
PROBE_SIDE = 64
PROBE_LOW = 0.01
PROBE_HIGH = 0.99
# Default views as (center x, center y, view width): each frames its whole set.
DEFAULT_MANDELBROT_VIEW = (-0.5, 0.0, 3.5)
DEFAULT_JULIA_VIEW = (0.0, 0.0, 3.0)

# ---- explorer (/explore: map tiles rendered on the queue) -----------------

# Tiles are tasks at this priority, ahead of batch renders (DEFAULT_PRIORITY).
EXPLORE_PRIORITY = 0
# Pixels per tile side (Leaflet's tileSize). Zoom z: a tile is the fractal's
# default view width / 2**z wide, an exact decimal view (from about zoom 34 a
# deep one, rendered by perturbation). TILE_MAX_ZOOM keeps the browser's map
# coordinates (float64 in Leaflet) well within their precision.
TILE_SIZE = 256
TILE_MAX_ZOOM = 36
TILE_MAX_ITER = 10_000
# Tiles one browser request may ask for: a 4K screen of 256-pixel tiles, whose
# list at the deepest zoom (29 characters a tile) keeps the URL under 8 kB.
MAX_TILES_PER_REQUEST = 160
# Tile requests arriving within this window go to the queue as one job; its
# tasks hold up to TILES_PER_TASK tiles, fewer when there are workers to spare.
TILE_BATCH_WINDOW = 0.002
TILES_PER_TASK = 8
# What the explorer may have on the queue at once, across all browsers: more is
# refused (503, retry) rather than queued.
MAX_TILE_JOBS = 16
MAX_TILES_IN_FLIGHT = 2048
# A tile not rendered within this time is answered as failed and its job cancelled.
TILE_TIMEOUT = 30.0
# A tile task's result is its tiles' PNGs (4 MiB: 8 tiles of 256 x 256 barely compress).
TILE_RESULT_BYTES = 4 * 1024 * 1024
# Rendered tiles kept in the coordinator's memory, shared by every browser: about
# 1,000 tiles (30 screens) of 50-60 kB, well within the chart's 512Mi for the
# coordinator next to its queue.
TILE_CACHE_BYTES = 64 * 1024 * 1024
# Deep zoom. A view's centre and width are decimal strings of at most
# MAX_DECIMAL_LENGTH characters, its width at least 10**-MAX_ZOOM_DIGITS. A view
# whose pixel is narrower than DEEP_PIXEL_RELATIVE x max(1, |centre|) (2**-40:
# about 4,000 float64 units of the last place) renders by perturbation around a
# reference orbit computed with REFERENCE_GUARD_BITS more bits than the pixel needs.
MAX_DECIMAL_LENGTH = 12_000
MAX_ZOOM_DIGITS = 10_000
DEEP_PIXEL_RELATIVE = 2.0**-40
REFERENCE_GUARD_BITS = 64

# ---- zoom movies (fractalq zoom) --------------------------------------------

# A zoom's defaults: a 1280x720, 30 s, 30 fps movie, coloured on the auto scale
# (its range follows the keyframes' counts, see fractalq/fractal/movie.py).
ZOOM_WIDTH = 1280
ZOOM_HEIGHT = 720
ZOOM_SECONDS = 30.0
ZOOM_FPS = 30
ZOOM_MAX_ITER = 10_000
ZOOM_COLOUR_SCALE = "auto"
ZOOM_MAX_SECONDS = 3600.0
ZOOM_MAX_FPS = 120
# --max-iter-growth: each shallower keyframe iterates up to the next one's
# limit divided by the growth, never below ZOOM_MIN_ITER.
ZOOM_GROWTH_RANGE = (1.0, 4.0)
ZOOM_MIN_ITER = 256
# The auto scale's range per keyframe (quantiles of its outside pixels, as a
# probe's: PROBE_LOW and PROBE_HIGH) is smoothed over this many keyframes
# (a Gaussian's standard deviation), so the colours drift with depth, never jump.
ZOOM_COLOUR_SMOOTHING = 2.0
# A keyframe is rendered in pieces of at most this many pixels (bounded memory
# whatever its size; the pixels do not depend on the cut).
KEYFRAME_PIECE_PIXELS = 1 << 20
# A keyframe task's result carries a thumbnail for the dashboard, at most this
# many pixels on its longer side.
KEYFRAME_PREVIEW_SIZE = 192
# A keyframe gets the default time limit (an hour); the encoding, which makes
# every frame of the movie, this one (a job may set another for all its tasks).
ENCODE_TIME_LIMIT = 6 * 3600.0
# Encoding (PyAV, FFmpeg's libraries): H.264 in MP4 (libx264, yuv420p, or
# lossless RGB at crf 0) or VP9 in WebM. A fixed thread count: x264's and
# libvpx's bytes depend on it, and the same request must give the same video.
VIDEO_CRF = 20
VIDEO_MAX_CRF = {"mp4": 51, "webm": 63}
VIDEO_PRESET = "fast"
VIDEO_THREADS = 2
# Frames x264 looks ahead (its "fast" preset: 30). Each held frame of 1280x720
# costs about 4 MiB with x264's own planes: 10 keeps an encoding worker near
# 460 MiB at that size instead of 570, for a slightly larger file.
VIDEO_LOOKAHEAD = 10

# ---- storage -------------------------------------------------------------

# Each storage call: up to STORAGE_ATTEMPTS tries on a transient error, with
# the backoff formula above (fractalq/storage/retry.py).
STORAGE_ATTEMPTS = 5
STORAGE_RETRY_BASE_DELAY = 0.2
STORAGE_RETRY_MAX_DELAY = 5.0
# S3 client: a connection that takes longer than this to open is treated as a
# transient failure; a read may take longer (a large object on a busy server).
STORAGE_CONNECT_TIMEOUT = 5.0
STORAGE_READ_TIMEOUT = 30.0
# Attempts botocore itself makes per request in its "standard" retry mode
# (throttling, 5xx, dropped connections), before fractalq's own retry above.
S3_CLIENT_MAX_ATTEMPTS = 3
# Used when neither AWS_DEFAULT_REGION nor a profile names a region.
S3_DEFAULT_REGION = "us-east-1"
# SigV4 presigned URLs are valid for at most seven days.
PRESIGNED_URL_MAX_EXPIRES = 7 * 24 * 3600

# ---- operator ------------------------------------------------------------

DEFAULT_WORKER_DEPLOYMENT = "fractalq-worker"
SCALE_MIN = 0
SCALE_MAX = 10
SCALE_TASKS_PER_WORKER = 4
SCALE_INTERVAL = 5.0
SCALE_DOWN_WINDOW = 60.0  # Kubernetes' HPA uses 300 s
PROGRESS_INTERVAL = 1.0  # least seconds between two writes of a FractalJob's progress alone
# A FractalJob Failed with its job's dead letters held is asked after this often
# whether the job was requeued (then it is Running again) or purged (then final).
REQUEUE_CHECK_INTERVAL = 10.0
URL_EXPIRY = 7 * 24 * 3600  # presigned links: S3's longest allowed lifetime
COORDINATOR_RETRY_MAX_DELAY = 30.0
