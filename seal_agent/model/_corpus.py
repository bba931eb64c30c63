"""The small English corpus the ``tiny-random`` tokenizer is trained on.

A few KB of plain sentences, chat phrasing, JSON and tool-call words, so the
byte-level BPE learns merges for common English and for the markup the chat model
emits. Changing this text changes every ``tiny-random`` tokenizer and base hash:
treat it as frozen.
"""

from __future__ import annotations

CORPUS = """\
Hello! How are you today? I am fine, thank you. What can I do for you?
Hi there. Good morning. Good evening. Good night. Nice to meet you.
Please tell me about the weather. The weather is sunny and warm today.
It will rain tomorrow in the afternoon, so take an umbrella with you.
What is your name? My name is Alice. My name is Bob. Her name is Carol.
Where do you live? I live in a small house near the river and the park.
The user asked a question and the assistant answered it clearly.
The assistant is helpful, honest and kind. The system gives instructions.
Can you help me with my homework? Yes, of course. Let us start with math.
Two plus two is four. Three times five is fifteen. Ten minus seven is three.
The capital of France is Paris. The capital of Japan is Tokyo.
The capital of Italy is Rome. The capital of Germany is Berlin.
Water boils at one hundred degrees. Ice melts when it gets warm.
The sun rises in the east and sets in the west. The moon shines at night.
I like to read books, write stories, and listen to music in the evening.
She went to the market to buy apples, bread, milk, eggs and cheese.
He walked the dog in the park, then they came back home for dinner.
We are going to the library on Monday and to the museum on Friday.
They played football after school and then did their homework together.
Remember that my favorite color is blue and my favorite food is pasta.
Do you remember what I told you yesterday? Yes, you said you like tea.
Thank you for your help. You are welcome. Have a nice day!
I do not know the answer to that question, but I can try to find out.
Let me think about it step by step. First, we read the problem carefully.
Then we write down what we know. Finally, we check the answer again.
The meeting is at three o'clock in the conference room on the second floor.
Please send the report by email before the end of the week.
The project uses Python, a vector store, and a small language model.
A function takes arguments and returns a result. A tool is a function.
Call the search tool with a query. Call the calculator with an expression.
The tool returned a result. The answer is based on the tool result.
{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}
{"name": "search", "arguments": {"query": "capital of France"}}
{"name": "add", "arguments": {"a": 2, "b": 3}}
{"name": "multiply", "arguments": {"x": 6, "y": 7}}
{"type": "function", "function": {"name": "lookup", "description": "Look up a fact.",
"parameters": {"type": "object", "properties": {"key": {"type": "string"}},
"required": ["key"]}}}
<tool_call>
{"name": "get_time", "arguments": {"timezone": "UTC"}}
</tool_call>
<tool_response>
{"time": "12:00", "timezone": "UTC"}
</tool_response>
You may call one or more functions to assist with the user query.
For each function call, return a json object with the function name and arguments.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 20 42 100 1000 2024 3.14 0.5 -1
Punctuation: , . ; : ! ? ' " ( ) [ ] { } < > / \\ | - _ + = * & % $ # @ ~ `
Once upon a time, there was a little girl named Lily. She loved to play outside.
One day, she found a shiny red ball under a big green tree in the garden.
Her friend Tom came to play with her. They laughed and ran all day long.
At the end of the day, they were tired but happy, and they went to sleep.
The cat sat on the mat. The dog barked at the mailman. The bird sang a song.
Computers store data in memory. A model learns from examples and feedback.
Long term memory helps an agent remember facts about the people it talks to.
The adapter was trained on new conversations and then evaluated carefully.
If the new version forgets old facts, it is rejected and the old one stays.
Yes. No. Maybe. Sure. Okay. Right. Exactly. Correct. Wrong. Sorry.
Who, what, when, where, why and how are the six question words.
January February March April May June July August September October November December
Monday Tuesday Wednesday Thursday Friday Saturday Sunday
red orange yellow green blue purple black white brown gray pink
one two three four five six seven eight nine ten hundred thousand million
user assistant system tool function name content role message messages
"""
