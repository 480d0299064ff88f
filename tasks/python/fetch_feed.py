"""`fetch_feed(url)`: the feed hub's task in Python — blocking HTTP + xml.etree.

Returns `{"items": N, "title": "<first item title>"}` (`title` is null for a feed
without items). Fails with `HTTPError` for a non-2xx status, `FeedError` for a body
that is not an RSS or Atom feed, and the HTTP error kinds (`PermissionError` when the
manifest does not allow the host, `TimeoutError`, `ConnectionError`, …) otherwise.
"""

import xml.etree.ElementTree as ET

from sprout_task import TaskError, http, task

ATOM = "{http://www.w3.org/2005/Atom}"


def summarise(text: str) -> dict:
    """Counts the items of an RSS 2.0, RSS 1.0 or Atom document; the first one's title."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as e:
        raise TaskError("FeedError", f"not well-formed XML: {e}") from None
    local = root.tag.rsplit("}", 1)[-1]
    if local in ("rss", "RDF"):
        items = [el for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "item"]
    elif local == "feed":
        items = [el for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "entry"]
    else:
        raise TaskError("FeedError", f"<{local}> is not an RSS or Atom feed")
    title = None
    if items:
        for child in items[0]:
            if child.tag.rsplit("}", 1)[-1] == "title":
                title = "".join(child.itertext()).strip()
                break
    return {"items": len(items), "title": title}


@task(name="py.fetch_feed")
def fetch_feed(url: str) -> dict:
    """Fetches `url` and summarises the feed."""
    response = http.get(url).raise_for_status()
    return summarise(response.text)
