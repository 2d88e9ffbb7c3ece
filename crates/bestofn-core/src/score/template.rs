//! Client-side chat templates, for RM APIs that take text rather than chat messages.

use serde::{Deserialize, Serialize};

use super::Message;

/// How a conversation is rendered to the text an RM sees. It must match the RM's own
/// tokenizer template, or scores drift; the two common families are built in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChatTemplate {
    /// `<|im_start|>role\ncontent<|im_end|>\n` (Qwen, Skywork-Reward-V2-Qwen3, many others).
    Chatml,
    /// Llama 3: `<|begin_of_text|><|start_header_id|>role<|end_header_id|>\n\ncontent<|eot_id|>`.
    Llama3,
    /// `role: content` lines, for encoder RMs without a chat template.
    Plain,
}

impl ChatTemplate {
    /// Renders the whole conversation, final assistant turn included, with no generation prompt.
    pub fn render(self, turns: &[Message]) -> String {
        let mut out = String::new();
        match self {
            ChatTemplate::Chatml => {
                for m in turns {
                    out.push_str("<|im_start|>");
                    out.push_str(&m.role);
                    out.push('\n');
                    out.push_str(&m.content);
                    out.push_str("<|im_end|>\n");
                }
            }
            ChatTemplate::Llama3 => {
                out.push_str("<|begin_of_text|>");
                for m in turns {
                    out.push_str("<|start_header_id|>");
                    out.push_str(&m.role);
                    out.push_str("<|end_header_id|>\n\n");
                    out.push_str(m.content.trim());
                    out.push_str("<|eot_id|>");
                }
            }
            ChatTemplate::Plain => {
                for (i, m) in turns.iter().enumerate() {
                    if i > 0 {
                        out.push('\n');
                    }
                    out.push_str(&m.role);
                    out.push_str(": ");
                    out.push_str(&m.content);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turns() -> Vec<Message> {
        vec![
            Message { role: "user".into(), content: "2+2?".into() },
            Message { role: "assistant".into(), content: "4".into() },
        ]
    }

    #[test]
    fn renders_each_family() {
        assert_eq!(
            ChatTemplate::Chatml.render(&turns()),
            "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n"
        );
        assert_eq!(
            ChatTemplate::Llama3.render(&turns()),
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n2+2?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n4<|eot_id|>"
        );
        assert_eq!(ChatTemplate::Plain.render(&turns()), "user: 2+2?\nassistant: 4");
    }
}
