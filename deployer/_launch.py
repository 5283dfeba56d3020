"""Build launcher: apply resource limits, then exec ``/bin/sh -c COMMAND``.

Run as ``python -I -S _launch.py CPU_S AS_BYTES FSIZE_BYTES COMMAND``. It is a
standalone file (no imports from buildq) so the limits are set in a fresh,
single-threaded process instead of a ``preexec_fn`` in the threaded daemon.
"""

import os
import resource
import sys


def main() -> None:
    cpu_s, as_bytes, fsize_bytes = (int(v) for v in sys.argv[1:4])
    command = sys.argv[4]
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s))
    resource.setrlimit(resource.RLIMIT_AS, (as_bytes, as_bytes))
    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize_bytes, fsize_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    os.execv("/bin/sh", ["/bin/sh", "-c", command])  # noqa: S606 - the build command is the point


if __name__ == "__main__":
    main()
