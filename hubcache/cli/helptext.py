"""The help epilogs of the commands that fetch and look after entries:
examples, exit codes and the fields of their JSON (tests check these lists
against what the commands print)."""

PREFETCH_EPILOG = """\
examples:
  hubcache prefetch https://tfhub.dev/google/nnlm-en-dim128/2
  hubcache prefetch -j 4 -f handles.txt --lock hubcache.lock
  hubcache prefetch --to s3://models/hub -f hubcache.lock --require-hashes
  hubcache prefetch --to /mnt/usb/tier -f hubcache.lock   # then: aws s3 sync /mnt/usb/tier s3://models/hub

A HANDLE argument must be remote: a local path there is a usage error (exit 2)
and nothing is fetched; if it names a file, the hint is -f FILE. A malformed
handle, or a local path read from a -f file, fails as that handle (exit 1),
and the others are still fetched.

--json prints a list with one record per handle, in the order given:
  handle      the handle as given, secrets shown as *** (a password in the
              URL; query values such as X-Amz-Signature or token)
  ok          true or false
  path        its local directory, or null when it failed
  seconds     when it finished, in seconds since the command started
  error       on failure only: the message
  error_type  on failure only: the exception's name (DownloadError, ...)
With --to, path is null, and a success also has
  to          the shared tier filled
  sha256      the SHA-256 of the archive stored there"""

RESOLVE_EPILOG = """\
examples:
  hubcache resolve https://tfhub.dev/google/nnlm-en-dim128/2
  MODEL=$(hubcache resolve -q https://tfhub.dev/google/yamnet/1)

--json prints one record:
  handle (as given, secrets shown as ***), ok (true or false), path (null on
  failure), and on failure only
  error (the message) and error_type (the exception's name)"""

EXPORT_EPILOG = """\
examples:
  hubcache export https://tfhub.dev/google/yamnet/1 -o /mnt/usb/models.tar
  hubcache export -f handles.txt -o models.tar

Every handle must be a cached remote handle; a malformed handle or a local
path is an error (exit 2), one that is not cached fails the command (exit 1),
and nothing is written either way.

--json prints one record:
  bundle   the file written
  bytes    its size
  handles  the handles it holds"""

IMPORT_EPILOG = """\
examples:
  hubcache import /mnt/usb/models.tar
  HUBCACHE_OFFLINE=1 hubcache import a.tar b.tar --json

--json prints a list: for each entry imported or already present
  bundle, handle, ok (true), result ("imported" or "already present"),
and for each bundle that could not be imported
  bundle, ok (false), error (the message), error_type (the exception's name)"""

_ENTRY_FIELDS_HELP = """\
  handle      the handle it was fetched under, secrets shown as *** (null if
              unknown)
  key         the SHA-1 of the handle: the entry's directory name
  path        its directory
  state       ok, foreign (made by tensorflow_hub), damaged, or incomplete
              (a download's leftovers)
  problem     what is wrong (damaged, incomplete), else null
  size        bytes on disk (a file hard-linked into n entries counts 1/n in each)
  files       number of files
  fetched_at  when it was fetched (ISO 8601, UTC), or null
  last_used   when it was last resolved (to the hour), or null
  source_url  where it was downloaded from (signatures removed), or null
  sha256      the SHA-256 of its archive, or null
  readonly    true for an entry of a HUBCACHE_READONLY_DIRS cache
  latest_of   the Kaggle handles without a version that last resolved to it"""

LS_EPILOG = f"""\
examples:
  hubcache ls --sort size --limit 10
  hubcache ls -q --filter yamnet | xargs hubcache rm -y

-q (before or after ls) prints only the handles of the entries listed, one
a line, each once; entries without a known handle are left out. --json wins
over -q.

--json prints {{"cache_dir": ..., "entries": [...]}}, each entry with:
{_ENTRY_FIELDS_HELP}"""

INFO_EPILOG = f"""\
examples:
  hubcache info https://tfhub.dev/google/yamnet/1
  hubcache info --signatures --json https://tfhub.dev/google/yamnet/1

Exits 1 if the handle is not cached or its entry is not usable (damaged).

--json prints one record with:
{_ENTRY_FIELDS_HELP}
  signatures  with --signatures only: {{name: "inputs -> outputs"}}"""

_REMOVAL_FIELDS_HELP = """\
  handle, key, path, size (bytes on disk), reason (why it is removed)"""

# What rm and prune share: quiet mode and their JSON.
_PLAN_HELP = f"""\
-q prints the plan only when asking or with --dry-run, and no "removed" line.

--json (which needs -y or --dry-run) prints
  with --dry-run: {{"dry_run": true, "plan": [removal, ...]}}
  else:           {{"removed": [removal, ...], "skipped": [removal, ...],
                   "freed": bytes}}  (skipped: in use, left in place)
with each removal:
{_REMOVAL_FIELDS_HELP}"""

RM_EPILOG = f"""\
examples:
  hubcache rm --dry-run https://tfhub.dev/google/yamnet/1
  hubcache ls -q --filter tfhub.dev/google | xargs hubcache rm -y

Every handle is checked first: a malformed handle or a local path is an error
(exit 2) and nothing is removed. A handle that is not cached is reported and
makes the exit code 1; the others are still removed.
{_PLAN_HELP}"""

PRUNE_EPILOG = f"""\
examples:
  hubcache prune --older-than 30d --dry-run
  hubcache prune --max-size 20G --damaged --temp -y

AGE needs a unit: s, m, h, d or w (30d, 12h); SIZE takes K, M, G or T (20G).
{_PLAN_HELP}"""

VERIFY_EPILOG = """\
examples:
  hubcache verify
  hubcache verify --repair https://tfhub.dev/google/yamnet/1

A malformed handle or a local path is an error (exit 2); a handle that is not
cached, or an entry still damaged at the end, exits 1.

--json prints a list, one record per entry checked:
  handle   its handle (null if unknown)
  path     its directory
  result   "ok", "damaged", "repaired", or "damaged (... not repaired)" saying why
  problem  what was found wrong, or null"""
