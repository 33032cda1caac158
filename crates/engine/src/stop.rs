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
    pub fn push(&mut self, piece: &str) -> StopOutput {
        if self.stopped {
            return StopOutput { text: String::new(), stopped: true };
        }
        if self.stops.is_empty() {
            return StopOutput { text: piece.to_string(), stopped: false };
        }
        self.held.push_str(piece);
        // The earliest stop string in the held text wins.
        if let Some(pos) = self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min() {
            self.stopped = true;
            let mut text = std::mem::take(&mut self.held);
            text.truncate(pos);
            return StopOutput { text, stopped: true };
        }
        // Hold back the longest tail that is a proper prefix of some stop string.
        let keep_from = self
            .held
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| {
                let tail = &self.held[i..];
                self.stops.iter().any(|s| s.len() > tail.len() && s.starts_with(tail))
            })
            .unwrap_or(self.held.len());
        let text = self.held[..keep_from].to_string();
        self.held.drain(..keep_from);
        StopOutput { text, stopped: false }
    }

    /// Ends the stream without a stop: the held-back text.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
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

    fn run(stops: &[&str], pieces: &[&str]) -> (Vec<String>, bool, String) {
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
        assert_eq!(tail, "S");
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
        assert_eq!((out.concat(), stopped, tail), ("ab".to_string(), false, String::new()));
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
            let first = stops.iter().filter_map(|s| text.find(s.as_str())).min();
            match first {
                Some(pos) => { prop_assert!(stopped); prop_assert_eq!(&got, &text[..pos]); }
                None => { prop_assert!(!stopped); got.push_str(&c.finish()); prop_assert_eq!(&got, &text); }
            }
        }
    }
}
