"""The peer: the sequential upload script users write today with Meta's own SDK.

Run as `python -m syncd.bench.sdk_peer BASE_URL ACCOUNT FOLDER` with the token in
SYNCD_ACCESS_TOKEN. It is what the SDK's documentation shows: `FacebookAdsApi.init`, then
`AdImage(parent_id="act_...")`, `[AdImage.Field.filename] = path`, `remote_create()`, one
file after another.

The SDK has no setting for its base URL: `FacebookSession.GRAPH` is a class attribute that
`FacebookAdsApi.call` reads through the api's session on every call. Setting it on the one
session instance `init` created (`api._session.GRAPH = ...`) is the least hacky way in: it
touches no class and no other session, and every request still goes through the SDK's own
`call` (its requests.Session, its multipart encoding, its error parsing).
`crash_log=False`: the SDK's crash reporter would post crashes to graph.facebook.com.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from facebook_business.adobjects.adimage import AdImage
from facebook_business.api import FacebookAdsApi

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff")


def main(argv: list[str]) -> int:
    """Upload every image under the folder, one at a time; print the count."""
    base_url, account, folder = argv
    # remote_create logs a deprecation warning per call; users silence it the same way.
    logging.getLogger().setLevel(logging.ERROR)
    api = FacebookAdsApi.init(
        access_token=os.environ["SYNCD_ACCESS_TOKEN"], api_version="v21.0", crash_log=False
    )
    api._session.GRAPH = base_url
    api._session.requests.trust_env = False  # loopback only, never a proxy
    uploaded = 0
    for path in sorted(Path(folder).rglob("*")):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        image = AdImage(parent_id=f"act_{account}")
        image[AdImage.Field.filename] = str(path)
        image.remote_create()
        if image[AdImage.Field.hash]:
            uploaded += 1
    print(uploaded)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
