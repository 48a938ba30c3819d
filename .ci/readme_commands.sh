#!/usr/bin/env bash
# Run the README's quick start exactly as written, as a new user would: the fenced block under
# "## Quick start" in README.md, in a fresh copy of the repository owned by a non-root user
# with sudo, in a fresh virtual environment. Whatever the README says is what runs, so the
# README cannot drift from what works.
#
#   bash .ci/readme_commands.sh            # as root: creates the user, then runs as it
#   README_USER=someone bash .ci/readme_commands.sh
#   bash .ci/readme_commands.sh --print    # only show the extracted commands
#
# The copy lives in a temporary folder owned by that user (the clone may not be readable by
# it); ../shared/fixtures, when present beside the clone, is copied beside the copy so the
# real-file tests run too. Needs network to PyPI (or the configured index) and the Debian
# mirror only.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
user=${README_USER:-framestream-ci}

# The block: lines between the first ```bash after "## Quick start" and the closing ```.
# Comment lines are dropped; a line ending in "\" continues on the next one.
commands=$(awk '
  /^## Quick start/ { section = 1; next }
  section && /^## / { exit }
  section && /^```bash/ { inside = 1; next }
  inside && /^```/ { exit }
  inside { print }
' README.md | sed -e '/^[[:space:]]*#/d' -e '/^[[:space:]]*$/d' | sed -e ':a' -e '/\\$/N; s/\\\n//; ta')
if [ -z "$commands" ]; then
  echo "readme_commands: no \`\`\`bash block under '## Quick start' in README.md" >&2
  exit 1
fi
if [ "${1:-}" = "--print" ]; then
  printf '%s\n' "$commands"
  exit 0
fi
echo "readme_commands: the README's quick start, as user $user:"
printf '%s\n' "$commands" | sed 's/^/  /'

if [ "$(id -u)" -ne 0 ]; then
  echo "readme_commands: run as root (it creates the user and gives it sudo)" >&2
  exit 1
fi
# A non-root user with passwordless sudo, as on a developer machine.
if ! command -v sudo >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq sudo >/dev/null
fi
id "$user" >/dev/null 2>&1 || useradd --create-home --shell /bin/bash "$user"
echo "$user ALL=(ALL) NOPASSWD:ALL" >"/etc/sudoers.d/90-$user"
chmod 0440 "/etc/sudoers.d/90-$user"

# A fresh copy of the tracked files (what a clone holds), owned by the user.
work=$(mktemp -d /tmp/readme-commands.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir "$work/framestream"
git ls-files -z --cached --others --exclude-standard | tar -C "$repo" --null -T - -cf - \
  | tar -C "$work/framestream" -xf -
if [ -d "$repo/../shared/fixtures" ]; then
  mkdir -p "$work/shared" && cp -r "$repo/../shared/fixtures" "$work/shared/"
fi
chown -R "$user:" "$work"

script="$work/quickstart.sh"
{
  echo 'set -e'
  echo 'cd "$(dirname "$0")/framestream"'
  printf '%s\n' "$commands" | while IFS= read -r cmd; do
    printf 'echo %q\n' "+ $cmd"
    printf 'start=$SECONDS\n%s\n' "$cmd"
    printf 'echo "readme_commands: done in $((SECONDS - start)) s"\n'
  done
} >"$script"
chown "$user:" "$script"
# A login shell: the user's own HOME, PATH and caches, nothing of root's environment.
runuser --login "$user" -c "bash $script"
