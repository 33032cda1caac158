//! Stop strings over streamed text: text arrives in pieces (one per token), a stop string
//! may be split across pieces, and what is returned never includes it. Text that could be
//! the start of a stop string is held back until the next pieces settle it.

/// What one [`StopChecker::push`] releases.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StopOutput {
    /// Text that is safe to show now.
    pub text: String,
    /// A stop string was found: `text` ends just before it and generation should end.
    pub stopped: bool,
}

/// Watches streamed text for any of a set of stop strings.
#[derive(Clone, Debug, Default)]
pub struct StopChecker {
    stops: Vec<String>,
    held: String,
    stopped: bool,
}

impl StopChecker {
    /// A checker for `stops` (empty strings are ignored).
    pub fn new(stops: &[String]) -> StopChecker {
        StopChecker { stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(), held: String::new(), stopped: false }
    }

    /// Adds the next piece of text; returns what can be released. After a stop, every
    /// later push returns nothing.
    ///
    /// The text is cut before the stop string that starts first, whatever the pieces: a
    /// complete stop string does not end the stream while a longer one that starts earlier
    /// could still complete with the next pieces (stop strings "ab" and "xab" on "…xa" + "b"
    /// wait for the next piece: "xab" may come); [`finish`](Self::finish) settles what is
    /// left at the end of the stream.
    pub fn push(&mut self, piece: &str) -> StopOutput {
        if self.stopped {
            return StopOutput { text: String::new(), stopped: true };
        }
        if self.stops.is_empty() {
            return StopOutput { text: piece.to_string(), stopped: false };
        }
        self.held.push_str(piece);
        let complete = self.first_complete();
        // The earliest held tail that is a proper prefix of some stop string.
        let pending = self.held.char_indices().map(|(i, _)| i).find(|&i| {
            let tail = &self.held[i..];
            self.stops.iter().any(|s| s.len() > tail.len() && s.starts_with(tail))
        });
        match complete {
            Some(pos) if !matches!(pending, Some(q) if q < pos) => self.stop_at(pos),
            _ => {
                let keep_from = pending.unwrap_or(self.held.len());
                let text = self.held[..keep_from].to_string();
                self.held.drain(..keep_from);
                StopOutput { text, stopped: false }
            }
        }
    }

    /// Ends the stream: the held-back text, cut before a stop string it holds (then
    /// `stopped`, as for a push).
    pub fn finish(&mut self) -> StopOutput {
        if self.stopped {
            return StopOutput { text: String::new(), stopped: true };
        }
        match self.first_complete() {
            Some(pos) => self.stop_at(pos),
            None => StopOutput { text: std::mem::take(&mut self.held), stopped: false },
        }
    }

    /// Start of the earliest stop string in the held text.
    fn first_complete(&self) -> Option<usize> {
        self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min()
    }

    /// Stops, releasing the held text before `pos`.
    fn stop_at(&mut self, pos: usize) -> StopOutput {
        self.stopped = true;
        let mut text = std::mem::take(&mut self.held);
        text.truncate(pos);
        StopOutput { text, stopped: true }
    }

    /// Whether a stop string was seen.
    pub fn stopped(&self) -> bool {
        self.stopped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (Vec<String>, bool, StopOutput) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut c = StopChecker::new(&stops);
        let mut out = Vec::new();
        let mut stopped = false;
        for p in pieces {
            let o = c.push(p);
            out.push(o.text);
            if o.stopped {
                stopped = true;
                break;
            }
        }
        (out, stopped, c.finish())
    }

    #[test]
    fn stop_split_across_pieces() {
        let (out, stopped, _) = run(&["</s>"], &["Hello", " wor", "ld<", "/", "s>", "never"]);
        assert!(stopped);
        assert_eq!(out, vec!["Hello", " wor", "ld", "", ""]);
    }

    #[test]
    fn false_start_is_released() {
        let (out, stopped, tail) = run(&["STOP"], &["a ST", "ARt", " ok S"]);
        assert!(!stopped);
        assert_eq!(out, vec!["a ", "STARt", " ok "]);
        assert_eq!(tail, StopOutput { text: "S".into(), stopped: false });
    }

    #[test]
    fn earliest_of_several_and_inside_one_piece() {
        let (out, stopped, _) = run(&["world", "lo w"], &["hello world"]);
        assert!(stopped);
        assert_eq!(out, vec!["hel"]);
        let (out, _, _) = run(&["\n\n"], &["line one\n", "\nline two"]);
        assert_eq!(out.concat(), "line one");
    }

    #[test]
    fn multibyte_text_and_no_stops() {
        let (out, stopped, _) = run(&["ß!"], &["naïve ß", "?", "ß", "!"]);
        assert!(stopped);
        assert_eq!(out.concat(), "naïve ß?");
        let (out, stopped, tail) = run(&[], &["a", "b"]);
        assert_eq!((out.concat(), stopped, tail), ("ab".to_string(), false, StopOutput::default()));
    }

    #[test]
    fn an_earlier_longer_stop_is_waited_for() {
        // "ac" completes inside the first piece, but "caca" starts before it and may complete.
        let (out, stopped, _) = run(&["caca", "ac"], &["x cac", "a!"]);
        assert!(stopped);
        assert_eq!(out.concat(), "x ");
        // It does not: "ac" stands, settled by the next piece.
        let (out, stopped, _) = run(&["caca", "ac"], &["x cac", "b"]);
        assert!(stopped);
        assert_eq!(out, vec!["x ", "c"]);
        // The stream ends while waiting: finish settles on "ac".
        let (out, stopped, tail) = run(&["caca", "ac"], &["x cac"]);
        assert!(!stopped);
        assert_eq!(out.concat(), "x ");
        assert_eq!(tail, StopOutput { text: "c".into(), stopped: true });
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// However the text is cut into pieces, the released text is the text up to the
        /// first stop string (or all of it with `finish`), and nothing is released late.
        #[test]
        fn any_split_gives_the_text_before_the_first_stop(
            text in "[abc ]{0,40}",
            stops in prop::collection::vec("[abc]{1,4}", 0..3),
            cuts in prop::collection::vec(0usize..40, 0..10),
        ) {
            let mut cuts: Vec<usize> = cuts.into_iter().filter(|&c| c <= text.len()).collect();
            cuts.push(0);
            cuts.push(text.len());
            cuts.sort();
            cuts.dedup();
            let pieces: Vec<&str> = cuts.windows(2).map(|w| &text[w[0]..w[1]]).collect();
            let mut c = StopChecker::new(&stops);
            let mut got = String::new();
            let mut stopped = false;
            for p in &pieces {
                let o = c.push(p);
                got.push_str(&o.text);
                if o.stopped { stopped = true; break; }
            }
            if !stopped {
                let f = c.finish();
                got.push_str(&f.text);
                stopped = f.stopped;
            }
            let first = stops.iter().filter_map(|s| text.find(s.as_str())).min();
            match first {
                Some(pos) => { prop_assert!(stopped); prop_assert_eq!(&got, &text[..pos]); }
                None => { prop_assert!(!stopped); prop_assert_eq!(&got, &text); }
            }
        }
    }
}
