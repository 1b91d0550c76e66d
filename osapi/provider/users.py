"""The user accounts of the passwd database (``pwd.getpwall``: /etc/passwd and NSS).

Only ``name, uid, gid, home, shell``: never the password field, which is ``x`` or
``*`` in /etc/passwd anyway -- the hashes live in /etc/shadow, which this never
opens. Ordered by uid, then name.
"""

from __future__ import annotations

import pwd


def users(data: dict, host) -> dict:
    accounts = [
        {"name": entry.pw_name, "uid": entry.pw_uid, "gid": entry.pw_gid, "home": entry.pw_dir,
         "shell": entry.pw_shell}
        for entry in pwd.getpwall()
    ]
    accounts.sort(key=lambda account: (account["uid"], account["name"]))
    return {"users": accounts}
