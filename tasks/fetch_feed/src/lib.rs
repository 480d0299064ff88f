//! `fetch_feed(url)`: fetches an RSS or Atom feed with the SDK's blocking HTTP helper
//! and parses it with a real XML parser. The guest code is plain blocking Rust; the
//! worker suspends it while the request waits, so a thousand of these share a thread.
//!
//! Returns `{"items": N, "title": "<first item title>"}` (`title` is `null` for a feed
//! without items). Fails with `HTTPError` for a non-2xx status, `FeedError` for a body
//! that is not an RSS or Atom feed, and the SDK's HTTP error kinds (`PermissionError`,
//! `TimeoutError`, …) otherwise.

use serde_json::{Value, json};
use sprout_guest::{TaskError, http, task};

/// Fetches `url` and summarises the feed.
#[task]
fn fetch_feed(url: String) -> Result<Value, TaskError> {
    let response = http::get(&url)?.error_for_status()?;
    let text = std::str::from_utf8(&response.body)
        .map_err(|e| TaskError::new("FeedError", format!("{url}: the feed is not UTF-8: {e}")))?;
    let summary =
        summarise(text).map_err(|e| TaskError::new("FeedError", format!("{url}: {e}")))?;
    Ok(json!({ "items": summary.items, "title": summary.first_title }))
}

/// What a feed holds, as far as this task cares.
#[derive(Debug, PartialEq, Eq)]
struct Summary {
    /// RSS `<item>`s or Atom `<entry>`s.
    items: usize,
    /// The trimmed text of the first item's `<title>`.
    first_title: Option<String>,
}

/// Counts the items of an RSS 2.0 (`rss/channel/item`), RSS 1.0 (`rdf:RDF/item`) or Atom
/// (`feed/entry`) document and reads the first one's title.
fn summarise(xml: &str) -> Result<Summary, String> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| format!("not well-formed XML: {e}"))?;
    let root = doc.root_element();
    let item_name = match root.tag_name().name() {
        "rss" | "RDF" => "item",
        "feed" => "entry",
        other => return Err(format!("<{other}> is not an RSS or Atom feed")),
    };
    let mut items = root
        .descendants()
        .filter(|n| n.is_element() && n.tag_name().name() == item_name);
    let first = items.next();
    let first_title = first.and_then(|item| {
        item.children()
            .find(|n| n.is_element() && n.tag_name().name() == "title")
            .map(|t| {
                t.descendants()
                    .filter(|n| n.is_text())
                    .filter_map(|n| n.text())
                    .collect::<String>()
                    .trim()
                    .to_string()
            })
    });
    Ok(Summary {
        items: usize::from(first.is_some()) + items.count(),
        first_title,
    })
}

sprout_guest::export_tasks!(fetch_feed);

#[cfg(test)]
mod tests {
    use super::*;
    use sprout_guest::http::Response;
    use sprout_guest::testing;

    const RSS: &str = r#"<?xml version="1.0"?>
<rss version="2.0"><channel><title>Feed</title>
  <item><title> First &amp; best </title></item>
  <item><title>Second</title></item>
  <item><title><![CDATA[Third]]></title></item>
</channel></rss>"#;

    const ATOM: &str = r#"<feed xmlns="http://www.w3.org/2005/Atom"><title>A</title>
  <entry><title type="text">Atom one</title></entry>
</feed>"#;

    #[test]
    fn rss_and_atom() {
        assert_eq!(
            summarise(RSS).unwrap(),
            Summary {
                items: 3,
                first_title: Some("First & best".into())
            }
        );
        assert_eq!(
            summarise(ATOM).unwrap(),
            Summary {
                items: 1,
                first_title: Some("Atom one".into())
            }
        );
        assert_eq!(
            summarise("<rss><channel/></rss>").unwrap(),
            Summary {
                items: 0,
                first_title: None
            }
        );
        assert!(
            summarise("<html/>")
                .unwrap_err()
                .contains("not an RSS or Atom")
        );
        assert!(summarise("<rss>").unwrap_err().contains("not well-formed"));
    }

    #[test]
    fn fetches_through_the_sdk() {
        testing::mock_http(|req| {
            Ok(if req.url.ends_with("/feed.xml") {
                Response {
                    status: 200,
                    body: RSS.into(),
                    ..Response::default()
                }
            } else {
                Response {
                    status: 404,
                    ..Response::default()
                }
            })
        });
        assert_eq!(
            TASKS
                .call(
                    "fetch_feed",
                    json!(["http://127.0.0.1:1/feed.xml"]),
                    json!({})
                )
                .unwrap(),
            json!({"items": 3, "title": "First & best"})
        );
        let e = fetch_feed("http://127.0.0.1:1/missing".into()).unwrap_err();
        assert_eq!(e.kind, "HTTPError");
        testing::reset();
    }
}
