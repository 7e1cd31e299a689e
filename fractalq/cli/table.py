"""Every option of the ``fractalq`` command line, declared once (see :mod:`fractalq.options`).

Each row is an option, its ``FRACTALQ_*`` variable (``FRACTALQ_`` and the flag
by default), its default (from :mod:`fractalq.config`) and its help. A row that
several commands take means the same thing in each (``--coordinator``, the TLS
files, ``--storage``, ``--out``...); a flag that means something else in one
command has a variable of its own there (``requeue --task`` is
``FRACTALQ_REQUEUE_TASKS``, ``submit --task`` is ``FRACTALQ_TASK``). The
operator's rows (:data:`OPERATOR`) are also what
:class:`~fractalq.operator.settings.OperatorSettings` reads from its environment.

``python -m fractalq.cli.listing`` prints docs/options.md's table of them all.
"""

from __future__ import annotations

import os

from fractalq import config
from fractalq.cli.common import address, cert_host, listen_host
from fractalq.fractal.palettes import COLOUR_SCALES, PALETTES
from fractalq.logs import FORMATS, LEVELS
from fractalq.options import Option, boolean, choice, integer, real

# ---- the coordinator's address and how to reach it (every client) -----------------

COORDINATOR = Option(
    "--coordinator",
    "the coordinator's gRPC address",
    type=address,
    metavar="HOST:PORT",
    required=True,
)
TLS_CA = Option(
    "--tls-ca", "CA of the coordinator's certificate (turns TLS on)", metavar="FILE", shown="none"
)
TLS_CLIENT_CERT = Option(
    "--tls-cert", "client certificate, for mutual TLS", metavar="FILE", shown="none"
)
TLS_CLIENT_KEY = Option("--tls-key", "its key", metavar="FILE", shown="none")
# The token itself may come in FRACTALQ_TOKEN (never as a flag: argv is public).
TOKEN_FILE = Option(
    "--token-file",
    "file holding the token (or the token itself in $FRACTALQ_TOKEN)",
    metavar="FILE",
    shown="none",
)
CLIENT_TLS = (TLS_CA, TLS_CLIENT_CERT, TLS_CLIENT_KEY, TOKEN_FILE)
CLIENT_TLS_TITLE = "TLS and token"

STORAGE = Option(
    "--storage", "storage URL: file:///path or s3://bucket/prefix", metavar="URL", shown="none"
)

# ---- logs of the long-running commands ------------------------------------------

LOG_LEVEL = Option(
    "--log-level",
    "least level logged (-v: debug)",
    default="info",
    type=choice(*LEVELS),
    metavar="|".join(LEVELS),
    shorthands={"-v": "debug", "--verbose": "debug"},
)
LOG_FORMAT = Option(
    "--log-format",
    "text lines, or JSON lines (time, level, logger, message and any extra fields)",
    default="text",
    type=choice(*FORMATS),
    metavar="|".join(FORMATS),
)
LOGS = (LOG_LEVEL, LOG_FORMAT)
LOGS_TITLE = "logs"

# ---- task types --------------------------------------------------------------

TASK_MODULES = Option(
    "--tasks",
    "module that registers task types, MODULE or MODULE:FUNCTION (repeatable; besides"
    " the fractalq.tasks entry points)",
    metavar="MODULE",
    kind="list",
    default=[],
)

# ---- the coordinator ---------------------------------------------------------

HOST = Option(
    "--host", "address to listen on", default=config.DEFAULT_HOST, type=listen_host, metavar="HOST"
)
PORT = Option(
    "--port", "gRPC port (0: any)", default=config.DEFAULT_PORT, type=integer(0, 65535),
    metavar="PORT",
)  # fmt: skip
HTTP_PORT = Option(
    "--http-port",
    "HTTP port: dashboard, API, /metrics (0: any)",
    default=config.DEFAULT_HTTP_PORT,
    type=integer(0, 65535),
)
NO_HTTP = Option("--no-http", "serve no HTTP port", default=False, kind="switch")
DATA = Option("--data", "folder for the database", metavar="DIR", shown="none: in memory only")
SERVED_STORAGE = STORAGE.but(
    help="the workers' storage, to serve finished images (dashboard, fetch)",
    shown="none: the page says where each image is",
)
WORKER_TIMEOUT = Option(
    "--worker-timeout",
    "seconds without a heartbeat before a worker is declared dead",
    default=config.DEFAULT_WORKER_TIMEOUT,
    type=real(0.1, 3600),
    metavar="S",
)
RETENTION = Option(
    "--retention",
    "seconds a finished job is kept after it finished (0: forever)",
    default=config.DEFAULT_RETENTION,
    type=real(0, config.MAX_RETENTION),
    metavar="S",
)
ORPHAN_SWEEP = Option(
    "--orphan-sweep",
    "seconds between sweeps of storage for objects of jobs this coordinator does not know,"
    " older than the retention (0: never)",
    default=config.ORPHAN_SWEEP_INTERVAL,
    type=real(0, config.MAX_RETENTION),
    metavar="S",
)
QUOTAS = (
    Option(
        "--quota-active-jobs",
        "unfinished jobs one token holder may have (0: no limit)",
        default=config.QUOTA_ACTIVE_JOBS,
        type=integer(0),
        metavar="N",
    ),
    Option(
        "--quota-queued-tasks",
        "tasks of one holder's unfinished jobs not done yet (0: no limit)",
        default=config.QUOTA_QUEUED_TASKS,
        type=integer(0),
        metavar="N",
    ),
    Option(
        "--quota-job-pixels",
        "pixels of one holder's render (0: no limit)",
        default=config.QUOTA_JOB_PIXELS,
        shown=f"{config.QUOTA_JOB_PIXELS}: 16384 x 16384",
        type=integer(0),
        metavar="N",
    ),
)
QUOTAS_TITLE = "quotas: what one token holder may have on the queue, with --auth-tokens"
SERVER_TLS = (
    Option(
        "--tls-cert",
        "serve TLS with this certificate",
        metavar="FILE",
        shown="none",
    ),
    Option("--tls-key", "its key", metavar="FILE", shown="none"),
    Option(
        "--tls-client-ca",
        "require gRPC clients to show a certificate this CA signed",
        metavar="FILE",
        shown="none",
    ),
    Option(
        "--auth-tokens",
        "lines ROLE TOKEN [NAME] (roles worker, client, reader, admin; NAME: the holder,"
        " who owns the jobs the token submits)",
        metavar="FILE",
        shown="none: no tokens",
    ),
)
SERVER_TLS_TITLE = "TLS and tokens"

# ---- the worker --------------------------------------------------------------

WORKER_STORAGE = STORAGE.but(shown="none: only task types that need no storage")
CONCURRENCY = Option(
    "--concurrency",
    "tasks run at once",
    default=config.DEFAULT_CONCURRENCY,
    type=integer(1, config.MAX_CONCURRENCY),
    metavar="N",
)
PREFETCH = Option(
    "--prefetch",
    "tasks leased ahead of those running, so the next one is at hand",
    default=config.DEFAULT_PREFETCH,
    type=integer(0, 1024),
    metavar="N",
)
GRACE_PERIOD = Option(
    "--grace-period",
    "on SIGTERM, how long running tasks may take before they are handed back",
    default=config.DEFAULT_GRACE_PERIOD,
    type=real(0, 3600),
    metavar="S",
)
STORAGE_OUTAGE_LIMIT = Option(
    "--storage-outage-limit",
    "how long a task waits for unreachable storage, keeping its attempt, before it fails",
    default=config.STORAGE_OUTAGE_LIMIT,
    type=real(1, config.MAX_STORAGE_OUTAGE_LIMIT),
    metavar="S",
)
TASK_TYPES = Option(
    "--task-types",
    "comma-separated task types to run",
    metavar="NAMES",
    shown="every registered type it can run",
)

# ---- renders -----------------------------------------------------------------

FRACTAL = Option(
    "--fractal",
    "which fractal",
    default=config.DEFAULT_FRACTAL,
    type=choice("mandelbrot", "julia"),
    metavar="mandelbrot|julia",
    shorthands={"--mandelbrot": "mandelbrot", "--julia": "julia"},
)
RENDER = (
    Option("--width", "pixels", default=config.DEFAULT_WIDTH, type=int, metavar="N"),
    Option("--height", "pixels", default=config.DEFAULT_HEIGHT, type=int, metavar="N"),
    # No default here: absent, the band count follows the image (fractalq.fractal.request).
    Option(
        "--regions",
        "bands (one task each)",
        type=int,
        metavar="N",
        shown=f"{config.DEFAULT_REGIONS}, fewer for a small image",
    ),
    Option(
        "--max-iter", "iterations per pixel", default=config.DEFAULT_MAX_ITER, type=int, metavar="N"
    ),
    # Decimal strings of any length (deep views keep every digit); checked by RenderRequest.
    Option(
        "--center-x",
        "centre of the view, real part",
        metavar="DECIMAL",
        shown="the fractal's: -0.5 or 0",
    ),
    Option("--center-y", "centre of the view, imaginary part", metavar="DECIMAL", shown="0"),
    Option(
        "--view-width",
        "width of the view in the plane (any depth: 1e-300 renders by perturbation)",
        metavar="DECIMAL",
        shown="the fractal's: 3.5 or 3",
    ),
    Option(
        "--c-re",
        "Julia constant, real part",
        type=float,
        metavar="X",
        shown=str(config.DEFAULT_JULIA_C[0]),
    ),
    Option(
        "--c-im",
        "Julia constant, imaginary part",
        type=float,
        metavar="Y",
        shown=str(config.DEFAULT_JULIA_C[1]),
    ),
    Option(
        "--palette",
        f"one of {', '.join(sorted(PALETTES))}",
        default=config.DEFAULT_PALETTE,
        metavar="NAME",
    ),
    Option(
        "--colour-scale",
        f"how iteration counts lie on the palette: {', '.join(COLOUR_SCALES)}"
        " (auto: over the view's own range, smooth at any depth)",
        default=config.DEFAULT_COLOUR_SCALE,
        metavar="SCALE",
    ),
    Option(
        "--counts-out",
        "also write each pixel's smooth iteration count (NumPy .npy, float32, inside: inf)",
        metavar="PATH",
        shown="none",
    ),
)
PRIORITY = Option(
    "--priority",
    "lower runs first",
    default=config.DEFAULT_PRIORITY,
    type=integer(*config.PRIORITY_RANGE),
    metavar="P",
)
KEEP_BANDS = Option("--keep-bands", "keep band objects afterwards", default=False, kind="switch")
RENDER_TITLE = "render options"
OUT = Option("--out", "where to write the image", metavar="PATH", required=True)
DEMO_OUT = OUT.but(required=False, shown="./mandelbrot.png or ./julia.png")
RECONNECT_TIMEOUT = Option(
    "--reconnect-timeout",
    "how long to keep reconnecting to a lost coordinator",
    default=config.RENDER_RECONNECT_TIMEOUT,
    type=real(0, 24 * 3600),
    metavar="S",
)
WORKERS = Option(
    "--workers",
    "local worker processes",
    default=os.cpu_count() or 1,
    type=integer(1, 256),
    metavar="N",
    shown="the number of CPUs",
)

# ---- zoom movies -------------------------------------------------------------

_RENDER = {option.flag: option for option in RENDER}
ZOOM = (
    Option(
        "--to",
        "view width of the last frame, a decimal of any depth (1e-30)",
        metavar="WIDTH",
        required=True,
    ),
    Option(
        "--from",
        "view width of the first frame",
        metavar="WIDTH",
        variable="FRACTALQ_ZOOM_FROM",
        shown="the fractal's whole view: 3.5 or 3",
    ),
    _RENDER["--width"].but(default=config.ZOOM_WIDTH, help="frame width, pixels (even)"),
    _RENDER["--height"].but(default=config.ZOOM_HEIGHT, help="frame height, pixels (even)"),
    _RENDER["--max-iter"].but(
        default=config.ZOOM_MAX_ITER, help="iteration limit of the deepest keyframe"
    ),
    Option(
        "--max-iter-growth",
        "each shallower keyframe's limit is the next deeper one's divided by G"
        f" (at least {config.ZOOM_MIN_ITER}); 1: the same limit everywhere",
        default=1.0,
        type=real(*config.ZOOM_GROWTH_RANGE),
        metavar="G",
    ),
    Option(
        "--seconds",
        "the movie's length",
        default=config.ZOOM_SECONDS,
        type=real(0, config.ZOOM_MAX_SECONDS),
        metavar="S",
    ),
    Option(
        "--fps",
        "frames per second",
        default=config.ZOOM_FPS,
        type=integer(1, config.ZOOM_MAX_FPS),
        metavar="F",
    ),
    _RENDER["--center-x"].but(help="the point zoomed into, real part"),
    _RENDER["--center-y"].but(help="the point zoomed into, imaginary part"),
    _RENDER["--c-re"],
    _RENDER["--c-im"],
    _RENDER["--palette"],
    _RENDER["--colour-scale"].but(
        default=config.ZOOM_COLOUR_SCALE,
        help=f"how iteration counts lie on the palette: {', '.join(COLOUR_SCALES)}"
        " (auto: over the keyframes' own ranges, smoothed over depth)",
    ),
    Option(
        "--crf",
        "video quality, lower is better: 0-51 for MP4 (H.264), 0-63 for WebM (VP9); 0 is"
        " lossless (MP4: RGB, which few players take)",
        default=config.VIDEO_CRF,
        type=integer(0, 63),
        metavar="N",
    ),
    PRIORITY,
    Option(
        "--keep-keyframes", "keep the keyframes in storage afterwards", default=False,
        kind="switch",
    ),
)  # fmt: skip
ZOOM_TITLE = "zoom options"
VIDEO_OUT = OUT.but(help="where to write the video: .mp4 or .webm")
DEMO_VIDEO_OUT = VIDEO_OUT.but(required=False, default="zoom.mp4")

# ---- jobs --------------------------------------------------------------------

TASK = Option("--task", "task type (noop, sleep, fail, ...)", metavar="NAME", required=True)
PAYLOAD = Option(
    "--payload", "the payload of every task", metavar="JSON", default="", shown="empty"
)
COUNT = Option(
    "--count", "tasks", default=1, type=integer(1, config.MAX_TASKS_PER_JOB), metavar="N"
)
MAX_ATTEMPTS = Option(
    "--max-attempts",
    "attempts of a task before it is dead-lettered",
    default=config.DEFAULT_MAX_ATTEMPTS,
    type=integer(1, config.MAX_ATTEMPTS_LIMIT),
    metavar="K",
)
TIME_LIMIT = Option(
    "--time-limit",
    "seconds an attempt of a task may run before it is stopped and failed"
    " (0: the task type's own limit)",
    default=0.0,
    type=real(0, config.MAX_TIME_LIMIT),
    metavar="S",
)
JOB_ID = Option("--job-id", "idempotency key", default="", shown="generated")
WAIT = Option("--wait", "show progress until the job ends", default=False, kind="switch")
WAIT_TIMEOUT = Option(
    "--timeout",
    "seconds to wait for the end, then exit 3 (0: do not wait, say how the job stands)",
    type=real(0),
    metavar="S",
    variable="FRACTALQ_WAIT_TIMEOUT",
    shown="no limit",
)
JSON = Option("--json", "print JSON", default=False, kind="switch")
HTTP_URL = Option(
    "--http-url",
    "the coordinator's HTTP port, for downloads without --storage",
    metavar="URL",
    shown="http(s)://<coordinator host>:8080, https with --tls-ca",
)
REASON = Option(
    "--reason", "recorded as the job's reason", default="", variable="FRACTALQ_CANCEL_REASON",
    shown="cancelled",
)  # fmt: skip
ACTIVE = Option("--active", "only jobs not finished", default=False, kind="switch")
LIMIT = Option(
    "--limit",
    "at most N, the latest first",
    default=config.DEFAULT_LIST_LIMIT,
    type=integer(1, config.MAX_LIST_LIMIT),
    metavar="N",
)
DEAD_JOB = Option("--job", "only this job's", default="", metavar="JOB", shown="every job's")
REQUEUE_TASKS = Option(
    "--task",
    "only this dead task (repeatable)",
    type=integer(0, 2**32 - 1),
    metavar="N",
    kind="list",
    default=[],
    variable="FRACTALQ_REQUEUE_TASKS",
    shown="all of the job's",
)

# ---- certificates ------------------------------------------------------------

CERT_HOSTS = Option(
    "--host",
    "another DNS name or IP address of the coordinator (repeatable)",
    type=cert_host,
    metavar="NAME",
    kind="list",
    default=[],
    variable="FRACTALQ_CERT_HOSTS",
    shown="localhost and 127.0.0.1 only",
)
CERT_DAYS = Option(
    "--days",
    "days the server and client certificates are valid",
    default=config.CERT_DAYS,
    type=integer(1, 100 * 365),
    metavar="N",
    variable="FRACTALQ_CERT_DAYS",
)
CERT_FORCE = Option(
    "--force",
    "replace files already there",
    default=False,
    kind="switch",
    variable="FRACTALQ_CERT_FORCE",
)

# ---- the operator ------------------------------------------------------------

OPERATOR = (
    COORDINATOR.but(required=False, default=f"127.0.0.1:{config.DEFAULT_PORT}"),
    STORAGE.but(help="storage URL for bands and images", required=True),
    Option(
        "--worker-deployment", "the worker Deployment to scale",
        default=config.DEFAULT_WORKER_DEPLOYMENT, metavar="NAME",
    ),
    Option(
        "--worker-namespace", "its namespace", default="", metavar="NAMESPACE",
        shown="the operator's own",
    ),
    Option(
        "--scale-enabled", "scale workers with the queue", default=True, type=boolean,
        metavar="true|false", shown="true",
    ),
    Option("--scale-min", "fewest workers", default=config.SCALE_MIN, type=integer(0), metavar="N"),
    Option("--scale-max", "most workers", default=config.SCALE_MAX, type=integer(1), metavar="N"),
    Option(
        "--scale-tasks-per-worker", "queued + running tasks per worker",
        default=config.SCALE_TASKS_PER_WORKER, type=integer(1), metavar="N",
    ),
    Option(
        "--scale-interval", "seconds between decisions", default=config.SCALE_INTERVAL,
        type=real(0.1), metavar="S",
    ),
    Option(
        "--scale-down-window", "seconds of lower demand before scaling down",
        default=config.SCALE_DOWN_WINDOW, type=real(0), metavar="S",
    ),
    *CLIENT_TLS,
    Option(
        "--url-expiry", "presigned link lifetime, seconds", default=config.URL_EXPIRY,
        type=integer(1, config.PRESIGNED_URL_MAX_EXPIRES), metavar="S",
    ),
    Option(
        "--requeue-check",
        "seconds between looks at a dead-lettered FractalJob's job (requeued? purged?)",
        default=config.REQUEUE_CHECK_INTERVAL, type=real(0.1), metavar="S",
    ),
    Option(
        "--s3-public-endpoint",
        "http(s)://host[:port] presigned links are signed for",
        default="", metavar="URL", shown="the S3 endpoint",
    ),
)  # fmt: skip
