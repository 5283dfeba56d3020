"""Every Redis key buildq uses, built in one place.

The namespace is wrapped in a hash tag (``{buildq}:...``) so every multi-key Lua
script stays valid on Redis Cluster: all keys of one deployment hash to one slot.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Keys:
    """Key names for one namespace."""

    namespace: str = "buildq"

    @property
    def prefix(self) -> str:
        return "{" + self.namespace + "}"

    @property
    def ingest(self) -> str:
        return f"{self.prefix}:ingest"

    @property
    def queue(self) -> str:
        return f"{self.prefix}:queue"

    def fair(self, queue: str) -> str:
        """hash: ``<rank>:<submitter>`` -> the last turn handed out in ``queue`` (a
        stage's queue key, e.g. :attr:`queue`; ``lua/_fair.lua``)."""
        return f"{self.prefix}:fair:{queue.rsplit(':', 1)[-1]}"

    @property
    def delayed(self) -> str:
        return f"{self.prefix}:delayed"

    @property
    def dead(self) -> str:
        return f"{self.prefix}:dead"

    @property
    def workers(self) -> str:
        return f"{self.prefix}:workers"

    @property
    def jobs(self) -> str:
        return f"{self.prefix}:jobs"

    @property
    def events(self) -> str:
        return f"{self.prefix}:events"

    @property
    def staging(self) -> str:
        return f"{self.prefix}:staging"

    @property
    def fleet(self) -> str:
        return f"{self.prefix}:fleet"

    @property
    def stats(self) -> str:
        """hash: fleet-wide counters and histogram buckets (``shared/engine/stats.py``)."""
        return f"{self.prefix}:stats"

    @property
    def recovery_lock(self) -> str:
        """Held by the one worker recovering stale workers' jobs at a time."""
        return f"{self.prefix}:recovery"

    @property
    def permits(self) -> str:
        """zset of slot -> expiry (ms): claim permits under fleet max_concurrency."""
        return f"{self.prefix}:permits"

    @property
    def control_channel(self) -> str:
        """Pub/sub channel for cancel and fleet-change notices to workers."""
        return f"{self.prefix}:control"

    def active(self, worker_id: str) -> str:
        return f"{self.prefix}:active:{worker_id}"

    def worker(self, worker_id: str) -> str:
        return f"{self.prefix}:worker:{worker_id}"

    def job(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def logs(self, job_id: str) -> str:
        return f"{self.prefix}:logs:{job_id}"

    def build(self, job_id: str) -> str:
        """string: a job's build override as submitted (command, env values), JSON.

        Private: the public record keeps only its redacted copy. Written with the
        job; deleted when the job goes live, else expires with the record."""
        return f"{self.prefix}:build:{job_id}"

    def lock(self, service: str) -> str:
        return f"{self.prefix}:lock:{service}"

    def fence(self, service: str) -> str:
        return f"{self.prefix}:fence:{service}"

    @property
    def locks(self) -> str:
        """zset of service -> last lock acquisition (ms): services with lock history."""
        return f"{self.prefix}:locks"

    def lock_history(self, service: str) -> str:
        """hash: the ``current`` and ``previous`` lock records, for "who had it last"."""
        return f"{self.prefix}:lock-history:{service}"

    def lock_waiters(self, service: str) -> str:
        """hash: waiter token -> queued request, for direct FIFO handoff on release."""
        return f"{self.prefix}:lock-waiters:{service}"

    def lock_jobs(self, service: str) -> str:
        """set: ids of jobs ``waiting`` in ``delayed`` for ``service``'s lock; a release
        that leaves the lock free makes them due at once (``lock_release.lua``)."""
        return f"{self.prefix}:lock-jobs:{service}"

    def lock_channel(self, service: str) -> str:
        """Pub/sub channel on which a release of ``service``'s lock is announced."""
        return f"{self.prefix}:lock-released:{service}"

    def site(self, service: str) -> str:
        return f"{self.prefix}:site:{service}"

    def seq(self, service: str) -> str:
        return f"{self.prefix}:seq:{service}"

    def promotions(self, service: str) -> str:
        """list of JSON {id, seq, at, rollback, from?, by?}, newest first (capped): what
        went live for the service, by deploy or rollback (promote.lua, rollback.lua)."""
        return f"{self.prefix}:promotions:{service}"

    def submissions(self, service: str) -> str:
        """zset of job id -> seq: the service's recent submissions (trimmed like
        ``jobs``), read at claim to find a newer one that has not ended."""
        return f"{self.prefix}:submissions:{service}"

    def status_target(self, job_id: str) -> str:
        """string: JSON {forge, repo, commit, service}, where a webhook deploy's commit
        statuses go (``uploader/statuses.py``)."""
        return f"{self.prefix}:status-target:{job_id}"

    @property
    def status_cursor(self) -> str:
        """string: the id of the last ``events`` entry the uploaders have read for end
        statuses; a starting uploader reads on from it (``uploader/feed.py``)."""
        return f"{self.prefix}:status-cursor"

    @property
    def durations_cursor(self) -> str:
        """string: the id of the last ``events`` entry the uploaders have read for build
        durations; a starting uploader reads on from it (``uploader/feed.py``)."""
        return f"{self.prefix}:durations-cursor"

    def status_sent(self, job_id: str, state: str) -> str:
        """string: set NX by the one uploader that posts this commit status."""
        return f"{self.prefix}:status-sent:{job_id}:{state}"

    def durations(self, service: str) -> str:
        """zset of ``<job id>:<build ms>`` -> ended_at (ms): the service's recent build
        durations (capped), for queue ETAs; ZADD of the same job twice is a no-op."""
        return f"{self.prefix}:durations:{service}"

    @property
    def services(self) -> str:
        """hash: service name -> JSON service record (repository, branches, build)."""
        return f"{self.prefix}:services"

    def hook_secret(self, service: str) -> str:
        """string: the service's webhook secret, Fernet-encrypted; never in its record."""
        return f"{self.prefix}:hook-secret:{service}"

    def secrets(self, service: str) -> str:
        """hash: secret name -> JSON {token (Fernet), updated_at}: values only builds see."""
        return f"{self.prefix}:secrets:{service}"

    def rate(self, identity: str, window: int) -> str:
        """Submissions by one (hashed) API token in one rate-limit window."""
        return f"{self.prefix}:ratelimit:{identity}:{window}"

    def idem(self, key: str) -> str:
        return f"{self.prefix}:idem:{key}"

    def session(self, digest: str) -> str:
        """string: a dashboard login session (``uploader/session.py``), keyed by the
        SHA-256 of its cookie value; JSON {name, token fingerprint}; PX TTL."""
        return f"{self.prefix}:session:{digest}"

    def login_attempts(self, client: str, window: int) -> str:
        """``POST /login`` attempts from one client address in one rate-limit window."""
        return f"{self.prefix}:login-attempts:{client}:{window}"
