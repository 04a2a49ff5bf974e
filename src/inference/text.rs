//! Text inputs: a string column tokenized in the engine into the token
//! ids, attention mask and token type ids a language model takes.
//!
//! The tokenizer is a Hugging Face `tokenizer.json`, applied with its
//! special tokens (its post-processor's `[CLS] ... [SEP]`, say), truncated
//! to `max_len` tokens and padded to exactly `max_len`: a fixed width, so
//! that a row's tensors, and its scores, do not depend on the other rows
//! of its batch. A null text is tokenized as the empty string.

use super::feeds::Buffer;
use crate::batch::Batch;
use crate::plan::TokensPlan;
use ort::session::{Session, SessionInputValue};
use ort::value::{Outlet, TensorElementType, ValueType};
use std::sync::Arc;
use tideflow_connectors::Value;
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

/// A text column and the model inputs its tokens feed.
#[derive(Debug)]
pub(super) struct TextFeed {
    /// The slot of the string column.
    slot: usize,
    tokenizer: Arc<Tokenizer>,
    /// Tokens per row.
    max_len: usize,
    /// Token ids, then the attention mask and token type ids where the
    /// model takes them.
    parts: Vec<TokenPart>,
}

/// One model input fed from the tokens.
#[derive(Clone, Debug)]
struct TokenPart {
    name: String,
    what: TokenPartKind,
    /// `max_len` cells per row, int64 or int32.
    cells: Buffer,
}

#[derive(Clone, Copy, Debug)]
enum TokenPartKind {
    Ids,
    Mask,
    TypeIds,
}

impl TextFeed {
    /// The feed of the text column at `slot` into the model input named
    /// `ids` (and `tokens.mask`, `tokens.type_ids`), or why it cannot be.
    pub(super) fn new(
        session: &Session,
        ids: &Outlet,
        slot: usize,
        tokens: &TokensPlan,
    ) -> Result<TextFeed, String> {
        let mut tokenizer = Tokenizer::from_file(&tokens.tokenizer).map_err(|error| {
            format!(
                "cannot read tokenizer {}: {error}",
                tokens.tokenizer.display()
            )
        })?;
        let max_len = match (tokens.max_len, fixed_width(ids)) {
            (Some(max_len), Some(width)) if max_len != width => {
                return Err(format!(
                    "input '{}' takes {width} tokens per row, but max_len is {max_len}",
                    ids.name()
                ));
            }
            (Some(max_len), _) | (None, Some(max_len)) => max_len,
            (None, None) => {
                return Err(format!(
                    "input '{}' takes any number of tokens; set max_len (tokens per row: longer texts are truncated, shorter ones padded)",
                    ids.name()
                ));
            }
        };
        fix_width(&mut tokenizer, max_len)?;
        let mut parts = vec![TokenPart::new(ids, TokenPartKind::Ids, max_len)?];
        for (name, what) in [
            (&tokens.mask, TokenPartKind::Mask),
            (&tokens.type_ids, TokenPartKind::TypeIds),
        ] {
            let Some(name) = name else { continue };
            let outlet = session
                .inputs()
                .iter()
                .find(|input| input.name() == name)
                .ok_or_else(|| {
                    format!("has no input '{name}' (for the tokens of '{}')", ids.name())
                })?;
            parts.push(TokenPart::new(outlet, what, max_len)?);
        }
        Ok(TextFeed {
            slot,
            tokenizer: Arc::new(tokenizer),
            max_len,
            parts,
        })
    }

    /// The model inputs fed.
    pub(super) fn names(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().map(|part| part.name.as_str())
    }

    /// Tokenizes the text of every row of `batch`, then pads up to
    /// `padded` rows with zeros.
    pub(super) fn gather(&mut self, batch: &Batch, padded: usize) -> Result<(), String> {
        let cells = batch.cells(self.slot);
        let texts = (0..batch.len()).map(|row| match &*cells.value(row) {
            Value::Str(text) => text.to_string(),
            _ => String::new(),
        });
        self.tokenize(texts, padded)
    }

    /// Tokenizes `rows` made-up texts (for the row-independence probe).
    pub(super) fn probe(&mut self, rows: usize) {
        let texts = (0..rows).map(|row| format!("probe {} text {}", row * 7919 % 17, row % 5));
        // A tokenizer that fails on plain ASCII text fails on the batches
        // too, where the failure is reported.
        let _ = self.tokenize(texts, rows);
    }

    /// A feed holding only row `row` of this one, padded to `padded` rows.
    pub(super) fn single_row(&self, row: usize, padded: usize) -> TextFeed {
        let parts = self
            .parts
            .iter()
            .map(|part| {
                let mut cells = part.cells.slice(row * self.max_len, self.max_len);
                cells.resize(padded * self.max_len);
                cells.clear_from(self.max_len);
                TokenPart {
                    cells,
                    ..part.clone()
                }
            })
            .collect();
        TextFeed {
            slot: self.slot,
            tokenizer: self.tokenizer.clone(),
            max_len: self.max_len,
            parts,
        }
    }

    /// The tensors of rows `first..first + rows`.
    pub(super) fn tensors(
        &self,
        first: usize,
        rows: usize,
    ) -> ort::Result<Vec<(&str, SessionInputValue<'_>)>> {
        let shape = [rows as i64, self.max_len as i64];
        self.parts
            .iter()
            .map(|part| {
                let tensor =
                    part.cells
                        .tensor(&shape, first * self.max_len, rows * self.max_len)?;
                Ok((part.name.as_str(), tensor))
            })
            .collect()
    }

    fn tokenize(
        &mut self,
        texts: impl ExactSizeIterator<Item = String>,
        padded: usize,
    ) -> Result<(), String> {
        let (rows, width) = (texts.len(), self.max_len);
        for part in &mut self.parts {
            part.cells.resize(padded * width);
        }
        for (row, text) in texts.enumerate() {
            let encoding = self
                .tokenizer
                .encode_fast(text.as_str(), true)
                .map_err(|error| format!("cannot tokenize '{text}': {error}"))?;
            for part in &mut self.parts {
                let tokens = match part.what {
                    TokenPartKind::Ids => encoding.get_ids(),
                    TokenPartKind::Mask => encoding.get_attention_mask(),
                    TokenPartKind::TypeIds => encoding.get_type_ids(),
                };
                part.cells
                    .set_tokens(row * width, &tokens[..width.min(tokens.len())]);
            }
        }
        for part in &mut self.parts {
            part.cells.clear_from(rows * width);
        }
        Ok(())
    }
}

impl TokenPart {
    fn new(outlet: &Outlet, what: TokenPartKind, max_len: usize) -> Result<TokenPart, String> {
        let ValueType::Tensor { ty, shape, .. } = outlet.dtype() else {
            return Err(format!("input '{}' is not a tensor", outlet.name()));
        };
        let cells = match ty {
            TensorElementType::Int64 => Buffer::I64(Vec::new()),
            TensorElementType::Int32 => Buffer::I32(Vec::new()),
            other => {
                return Err(format!(
                    "input '{}' is {other:?}; token ids and masks are fed as int64 or int32",
                    outlet.name()
                ));
            }
        };
        let fits = shape.len() == 2 && (shape[1] < 0 || shape[1] == max_len as i64);
        if !fits {
            return Err(format!(
                "input '{}' has shape {}; tokens are fed as [rows, {max_len}]",
                outlet.name(),
                super::describe(outlet.dtype())
            ));
        }
        Ok(TokenPart {
            name: outlet.name().to_owned(),
            what,
            cells,
        })
    }
}

/// The fixed number of tokens per row an input takes, if it fixes one.
fn fixed_width(outlet: &Outlet) -> Option<usize> {
    match outlet.dtype() {
        ValueType::Tensor { shape, .. } if shape.len() == 2 => usize::try_from(shape[1]).ok(),
        _ => None,
    }
}

/// Sets the tokenizer to truncate to and pad to exactly `max_len` tokens,
/// padding with its own pad token where its file names one, else with
/// `[PAD]` where its vocabulary has it, else with id 0.
fn fix_width(tokenizer: &mut Tokenizer, max_len: usize) -> Result<(), String> {
    let padding = match tokenizer.get_padding() {
        Some(padding) => PaddingParams {
            strategy: PaddingStrategy::Fixed(max_len),
            pad_to_multiple_of: None,
            ..padding.clone()
        },
        None => PaddingParams {
            strategy: PaddingStrategy::Fixed(max_len),
            pad_id: tokenizer.token_to_id("[PAD]").unwrap_or(0),
            pad_token: "[PAD]".into(),
            ..PaddingParams::default()
        },
    };
    tokenizer.with_padding(Some(padding));
    tokenizer
        .with_truncation(Some(TruncationParams {
            max_length: max_len,
            ..TruncationParams::default()
        }))
        .map_err(|error| format!("cannot truncate to {max_len} tokens: {error}"))?;
    Ok(())
}
