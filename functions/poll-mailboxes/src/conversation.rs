//! Which mails of a window belong to one conversation ([`conversations`]), so that their tickets
//! are posted one after the other in the order the mails arrived while other conversations are
//! posted at the same time.
//!
//! A reply posted while the ticket of the mail it answers is still being created would open a
//! ticket of its own instead of joining it. So two mails are one conversation when they share
//! any of (docs/mailboxes.md, "Windows and the order of tickets"):
//! - a Message-ID: one's own Message-ID, In-Reply-To or one of its References is another's
//!   (a reply and its original, two replies to the same mail, a thread's root);
//! - a ticket number: the signed marker's or the subject's;
//! - the same content (the dedupe key): the same mail delivered twice.
//!
//! Sharing is transitive (union-find over the window), so a chain A ← B ← C is one conversation
//! even when C names only B.

use std::collections::HashMap;

use mailbridge::mail::TicketDraft;

/// What a mail could share with another mail of its conversation.
pub fn conversation_ids(draft: &TicketDraft, dedupe_hash: &str) -> Vec<String> {
    let message_id = |id: &str| {
        let id = id
            .trim()
            .trim_start_matches('<')
            .trim_end_matches('>')
            .trim();
        (!id.is_empty()).then(|| format!("message-id:{id}"))
    };
    let ticket = |n: &str| {
        let n = n.trim();
        (!n.is_empty()).then(|| format!("ticket:{n}"))
    };
    let mut ids: Vec<String> = draft
        .message_id
        .iter()
        .chain(draft.in_reply_to.iter())
        .chain(draft.references.iter())
        .filter_map(|id| message_id(id))
        .chain(
            [&draft.ticket_number, &draft.subject_ticket_number]
                .into_iter()
                .flatten()
                .filter_map(|n| ticket(n)),
        )
        .collect();
    ids.push(format!("content:{dedupe_hash}"));
    ids
}

/// The conversations of a window: each a list of indexes into `ids` (one entry per mail, in
/// arrival order), ascending; the conversations ordered by their first mail.
pub fn conversations(ids: &[Vec<String>]) -> Vec<Vec<usize>> {
    let mut parent: Vec<usize> = (0..ids.len()).collect();
    fn root(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    let mut first_with: HashMap<&str, usize> = HashMap::new();
    for (mail, mail_ids) in ids.iter().enumerate() {
        for id in mail_ids {
            match first_with.get(id.as_str()) {
                Some(&other) => {
                    let (a, b) = (root(&mut parent, other), root(&mut parent, mail));
                    // the earlier mail stays the root: conversations keep their first mail's place
                    let (keep, join) = if a < b { (a, b) } else { (b, a) };
                    parent[join] = keep;
                }
                None => {
                    first_with.insert(id, mail);
                }
            }
        }
    }
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut group_of_root: HashMap<usize, usize> = HashMap::new();
    for mail in 0..ids.len() {
        let r = root(&mut parent, mail);
        let group = *group_of_root.entry(r).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[group].push(mail);
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draft(id: &str, in_reply_to: Option<&str>, references: &[&str]) -> TicketDraft {
        TicketDraft {
            message_id: (!id.is_empty()).then(|| id.to_owned()),
            in_reply_to: in_reply_to.map(str::to_owned),
            references: references.iter().map(|r| (*r).to_owned()).collect(),
            ..TicketDraft::default()
        }
    }

    fn groups(drafts: &[TicketDraft]) -> Vec<Vec<usize>> {
        let ids: Vec<Vec<String>> = drafts
            .iter()
            .enumerate()
            .map(|(i, d)| conversation_ids(d, &format!("hash-{i}")))
            .collect();
        conversations(&ids)
    }

    #[test]
    fn replies_join_their_original_and_unrelated_mail_stands_alone() {
        let mails = [
            draft("a@x", None, &[]),
            draft("b@x", None, &[]),
            draft("c@x", Some("a@x"), &["a@x"]),
            // names only the reply before it: still the same conversation
            draft("d@x", Some("c@x"), &[]),
            draft("e@x", None, &[]),
            // a reply to a mail of an earlier window: its own conversation here
            draft("f@x", Some("old@x"), &["old@x"]),
            // two replies to that same earlier mail: one conversation
            draft("g@x", Some("<old@x>"), &[]),
        ];
        assert_eq!(
            groups(&mails),
            vec![vec![0, 2, 3], vec![1], vec![4], vec![5, 6]]
        );
    }

    #[test]
    fn a_ticket_number_or_the_same_content_makes_one_conversation() {
        let mut by_marker = draft("m1@x", None, &[]);
        by_marker.ticket_number = Some("42".into());
        let mut by_subject = draft("m2@x", None, &[]);
        by_subject.subject_ticket_number = Some("42".into());
        let other = draft("", None, &[]);
        let ids = vec![
            conversation_ids(&by_marker, "h1"),
            conversation_ids(&other, "h2"),
            conversation_ids(&by_subject, "h3"),
            // the same mail twice (no Message-ID): same dedupe key
            conversation_ids(&other, "h2"),
        ];
        assert_eq!(conversations(&ids), vec![vec![0, 2], vec![1, 3]]);
    }
}
