"""Who is this visitor: a random token kept in the page's URL (`?visitor=…`), since the app has no sign-in.

Conversations are stored under this token (ui/history.py), so a visitor lists and opens only their own,
and a reload (or a restart of the app) finds them again: the URL keeps the token. Another browser, or
anyone opening the app's plain address, gets a new token and sees none of them.

What it does not protect: anyone who has the URL with the token (a shared link, the browser's history,
someone at the same computer) sees that visitor's conversations. It is a local, single-user convenience,
not an account; a class that needs privacy puts the app behind its own sign-in.

A token is 128 random bits (secrets.token_urlsafe(16), 22 characters); one given in the URL that is not
of that form (too short to be unguessable, odd characters) is replaced by a new one.
"""

from __future__ import annotations

import re
import secrets

import streamlit as st

PARAM = "visitor"
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{22,86}$")


def new_token() -> str:
    """A fresh visitor token: 128 random bits, URL-safe base64 (22 characters)."""
    return secrets.token_urlsafe(16)


def is_token(value: object) -> bool:
    """Whether `value` has the form of a visitor token (22-86 URL-safe characters)."""
    return isinstance(value, str) and bool(_TOKEN.match(value))


def visitor_token() -> str:
    """This visitor's token: the one in the URL when it is well formed, else a new one put in the URL."""
    token = st.query_params.get(PARAM)
    if not is_token(token):
        token = new_token()
        st.query_params[PARAM] = token
    return token
